//! Metrics of every task, computed from plain predictions so that the tuned model, the
//! baseline and any later re-evaluation are scored by the same code.
//!
//! Semantics follow the libraries people compare against: macro averages are over the
//! classes seen in the truth or the predictions, an undefined precision or recall counts
//! as 0 (scikit-learn's `zero_division=0`); entity F1 is seqeval's default (conlleval) chunking
//! of IOB2 tags, micro-averaged over entities.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::Task;

/// Metric names a blueprint may watch for early stopping, per task.
pub fn names_for(task: Task) -> &'static [&'static str] {
    match task {
        Task::Classification => &[
            "accuracy",
            "macro_f1",
            "macro_precision",
            "macro_recall",
            "loss",
        ],
        Task::MultiLabel => &["micro_f1", "macro_f1", "subset_accuracy", "loss"],
        Task::Regression => &["mae", "rmse", "r2", "loss"],
        Task::Tagging => &[
            "entity_f1",
            "entity_precision",
            "entity_recall",
            "token_accuracy",
            "loss",
        ],
    }
}

/// The metric a task is usually judged by.
pub fn headline(task: Task) -> &'static str {
    match task {
        Task::Classification => "macro_f1",
        Task::MultiLabel => "micro_f1",
        Task::Regression => "rmse",
        Task::Tagging => "entity_f1",
    }
}

/// Whether a larger value of the metric is better.
pub fn higher_is_better(name: &str) -> bool {
    !matches!(name, "loss" | "mae" | "rmse")
}

/// Precision, recall and F1 of one class, label or entity type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Rows (or entities) of this class in the truth.
    pub support: usize,
}

fn prf(tp: usize, fp: usize, fn_: usize) -> (f64, f64, f64) {
    let p = if tp + fp == 0 {
        0.0
    } else {
        tp as f64 / (tp + fp) as f64
    };
    let r = if tp + fn_ == 0 {
        0.0
    } else {
        tp as f64 / (tp + fn_) as f64
    };
    let f = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f)
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScores>,
    /// `confusion[true][predicted]`, in the order of `labels`.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
}

/// Scores class indices into `labels`.
pub fn classification(
    truth: &[usize],
    predicted: &[usize],
    labels: &[String],
) -> ClassificationMetrics {
    assert_eq!(truth.len(), predicted.len(), "one prediction per row");
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let accuracy = if truth.is_empty() {
        0.0
    } else {
        correct as f64 / truth.len() as f64
    };
    let mut per_class = Vec::new();
    let mut seen = Vec::new();
    for c in 0..k {
        let tp = confusion[c][c];
        let support: usize = confusion[c].iter().sum();
        let predicted_c: usize = (0..k).map(|t| confusion[t][c]).sum();
        let (precision, recall, f1) = prf(tp, predicted_c - tp, support - tp);
        per_class.push(ClassScores {
            label: labels[c].clone(),
            precision,
            recall,
            f1,
            support,
        });
        seen.push(support + predicted_c > 0);
    }
    let present = || {
        per_class
            .iter()
            .zip(&seen)
            .filter(|(_, s)| **s)
            .map(|(c, _)| c)
    };
    ClassificationMetrics {
        accuracy,
        macro_precision: mean(present().map(|c| c.precision)),
        macro_recall: mean(present().map(|c| c.recall)),
        macro_f1: mean(present().map(|c| c.f1)),
        per_class,
        confusion,
        labels: labels.to_vec(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelMetrics {
    pub micro_precision: f64,
    pub micro_recall: f64,
    pub micro_f1: f64,
    pub macro_f1: f64,
    /// Rows whose whole label set is right.
    pub subset_accuracy: f64,
    pub per_label: Vec<ClassScores>,
}

/// Scores label sets given as one bool per label for each row.
pub fn multi_label(
    truth: &[Vec<bool>],
    predicted: &[Vec<bool>],
    labels: &[String],
) -> MultiLabelMetrics {
    assert_eq!(truth.len(), predicted.len(), "one prediction per row");
    let k = labels.len();
    let (mut tp, mut fp, mut fn_) = (vec![0usize; k], vec![0usize; k], vec![0usize; k]);
    let mut exact = 0;
    for (t, p) in truth.iter().zip(predicted) {
        if t == p {
            exact += 1;
        }
        for l in 0..k {
            match (t[l], p[l]) {
                (true, true) => tp[l] += 1,
                (false, true) => fp[l] += 1,
                (true, false) => fn_[l] += 1,
                _ => {}
            }
        }
    }
    let per_label: Vec<ClassScores> = (0..k)
        .map(|l| {
            let (precision, recall, f1) = prf(tp[l], fp[l], fn_[l]);
            ClassScores {
                label: labels[l].clone(),
                precision,
                recall,
                f1,
                support: tp[l] + fn_[l],
            }
        })
        .collect();
    let (micro_precision, micro_recall, micro_f1) =
        prf(tp.iter().sum(), fp.iter().sum(), fn_.iter().sum());
    let macro_f1 = mean(
        (0..k)
            .filter(|&l| tp[l] + fp[l] + fn_[l] > 0)
            .map(|l| per_label[l].f1),
    );
    MultiLabelMetrics {
        micro_precision,
        micro_recall,
        micro_f1,
        macro_f1,
        subset_accuracy: if truth.is_empty() {
            0.0
        } else {
            exact as f64 / truth.len() as f64
        },
        per_label,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub mae: f64,
    pub rmse: f64,
    /// 1 − SS_res / SS_tot; 0 when the truth is constant and the fit is not exact.
    pub r2: f64,
    pub count: usize,
}

pub fn regression(truth: &[f64], predicted: &[f64]) -> RegressionMetrics {
    assert_eq!(truth.len(), predicted.len(), "one prediction per row");
    let n = truth.len();
    if n == 0 {
        return RegressionMetrics {
            mae: 0.0,
            rmse: 0.0,
            r2: 0.0,
            count: 0,
        };
    }
    let mae = mean(truth.iter().zip(predicted).map(|(t, p)| (t - p).abs()));
    let ss_res: f64 = truth
        .iter()
        .zip(predicted)
        .map(|(t, p)| (t - p).powi(2))
        .sum();
    let m = mean(truth.iter().copied());
    let ss_tot: f64 = truth.iter().map(|t| (t - m).powi(2)).sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else if ss_res == 0.0 {
        1.0
    } else {
        0.0
    };
    RegressionMetrics {
        mae,
        rmse: (ss_res / n as f64).sqrt(),
        r2,
        count: n,
    }
}

/// One entity: its type and the half-open range of words `[start, end)` it covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Span {
    pub label: String,
    pub start: usize,
    pub end: usize,
}

fn split_tag(tag: &str) -> (&str, &str) {
    match tag.split_once('-') {
        Some((p, t)) if matches!(p, "B" | "I" | "E" | "S") => (p, t),
        _ if tag == "O" || tag.is_empty() => ("O", ""),
        // A bare type (`PER`) is read as an inside tag, as seqeval does.
        _ => ("I", tag),
    }
}

/// Entities of a tag sequence with seqeval's default (conlleval) rules: an `I-X` that does
/// not continue an `X` starts a new entity instead of being dropped.
pub fn spans(tags: &[String]) -> Vec<Span> {
    let mut out = Vec::new();
    let (mut prev_tag, mut prev_type) = ("O", "");
    let mut start = 0;
    for (i, tag) in tags
        .iter()
        .map(String::as_str)
        .chain(std::iter::once("O"))
        .enumerate()
    {
        let (t, ty) = split_tag(tag);
        let end = match prev_tag {
            "E" | "S" => true,
            "B" | "I" => matches!(t, "B" | "S" | "O") || prev_type != ty,
            _ => false,
        };
        if end {
            out.push(Span {
                label: prev_type.to_string(),
                start,
                end: i,
            });
        }
        let begin = match t {
            "B" | "S" => true,
            "I" | "E" => matches!(prev_tag, "E" | "S" | "O") || prev_type != ty,
            _ => false,
        };
        if begin {
            start = i;
        }
        prev_tag = t;
        prev_type = ty;
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaggingMetrics {
    pub entity_precision: f64,
    pub entity_recall: f64,
    pub entity_f1: f64,
    /// Words whose tag is right.
    pub token_accuracy: f64,
    pub per_type: Vec<ClassScores>,
}

/// Entity-level scores of word tag sequences (one sequence per row).
pub fn tagging(truth: &[Vec<String>], predicted: &[Vec<String>]) -> TaggingMetrics {
    assert_eq!(truth.len(), predicted.len(), "one prediction per row");
    let mut counts: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let (mut words, mut right) = (0usize, 0usize);
    for (t, p) in truth.iter().zip(predicted) {
        for (a, b) in t.iter().zip(p) {
            words += 1;
            right += usize::from(a == b);
        }
        words += t.len().saturating_sub(p.len());
        let ts: BTreeSet<Span> = spans(t).into_iter().collect();
        let ps: BTreeSet<Span> = spans(p).into_iter().collect();
        for s in &ts {
            let e = counts.entry(s.label.clone()).or_default();
            if ps.contains(s) { e.0 += 1 } else { e.2 += 1 }
        }
        for s in ps.difference(&ts) {
            counts.entry(s.label.clone()).or_default().1 += 1;
        }
    }
    let (tp, fp, fn_) = counts
        .values()
        .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    let (entity_precision, entity_recall, entity_f1) = prf(tp, fp, fn_);
    let per_type = counts
        .into_iter()
        .map(|(label, (tp, fp, fn_))| {
            let (precision, recall, f1) = prf(tp, fp, fn_);
            ClassScores {
                label,
                precision,
                recall,
                f1,
                support: tp + fn_,
            }
        })
        .collect();
    TaggingMetrics {
        entity_precision,
        entity_recall,
        entity_f1,
        token_accuracy: if words == 0 {
            0.0
        } else {
            right as f64 / words as f64
        },
        per_type,
    }
}

/// The metrics of one output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Metrics {
    Classification(ClassificationMetrics),
    MultiLabel(MultiLabelMetrics),
    Regression(RegressionMetrics),
    Tagging(TaggingMetrics),
}

impl Metrics {
    pub fn task(&self) -> Task {
        match self {
            Metrics::Classification(_) => Task::Classification,
            Metrics::MultiLabel(_) => Task::MultiLabel,
            Metrics::Regression(_) => Task::Regression,
            Metrics::Tagging(_) => Task::Tagging,
        }
    }

    /// A named headline number (`macro_f1`, `rmse` …); `None` for names of other tasks.
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match (self, name) {
            (Metrics::Classification(m), "accuracy") => m.accuracy,
            (Metrics::Classification(m), "macro_f1") => m.macro_f1,
            (Metrics::Classification(m), "macro_precision") => m.macro_precision,
            (Metrics::Classification(m), "macro_recall") => m.macro_recall,
            (Metrics::MultiLabel(m), "micro_f1") => m.micro_f1,
            (Metrics::MultiLabel(m), "macro_f1") => m.macro_f1,
            (Metrics::MultiLabel(m), "subset_accuracy") => m.subset_accuracy,
            (Metrics::Regression(m), "mae") => m.mae,
            (Metrics::Regression(m), "rmse") => m.rmse,
            (Metrics::Regression(m), "r2") => m.r2,
            (Metrics::Tagging(m), "entity_f1") => m.entity_f1,
            (Metrics::Tagging(m), "entity_precision") => m.entity_precision,
            (Metrics::Tagging(m), "entity_recall") => m.entity_recall,
            (Metrics::Tagging(m), "token_accuracy") => m.token_accuracy,
            _ => return None,
        })
    }

    /// The task's headline numbers by name, for progress events and reports.
    pub fn summary(&self) -> BTreeMap<String, f64> {
        names_for(self.task())
            .iter()
            .filter_map(|n| self.get(n).map(|v| (n.to_string(), v)))
            .collect()
    }
}
