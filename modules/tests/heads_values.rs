//! Heads and their losses on hand-checked values; gradients reach every head tensor;
//! heads survive a safetensors round trip.

use candle_core::{Device, Tensor};
use tailor_modules::blueprint::HeadKind;
use tailor_modules::catalog::Task;
use tailor_modules::heads::{
    HeadConfig, Heads, Prediction, Target, binary_cross_entropy, cross_entropy, first_subtokens,
    log_softmax,
};

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-5, "{a} != {b}");
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

fn config(task: Task, kind: HeadKind, labels: &[&str]) -> HeadConfig {
    HeadConfig {
        name: "out".into(),
        task,
        kind,
        dropout: 0.0,
        in_width: 3,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        class_weights: None,
        target_mean: 0.0,
        target_std: 1.0,
    }
}

fn t2(rows: &[&[f32]]) -> Tensor {
    let cols = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), cols), &Device::Cpu).unwrap()
}

#[test]
fn cross_entropy_by_hand() {
    let logits = t2(&[&[1.0, 2.0, 3.0], &[0.0, 0.0, 0.0]]);
    // Row 0, target 2: log(1 + e^-1 + e^-2) = 0.4076060; row 1: ln 3 = 1.0986123.
    let (a, b) = (0.407_606_0, 3f64.ln());
    close(
        scalar(&cross_entropy(&logits, &[Some(2), Some(0)], None).unwrap()),
        (a + b) / 2.0,
    );
    // Weighted mean: (w2·a + w0·b) / (w2 + w0).
    let w = [3.0f32, 1.0, 1.0];
    close(
        scalar(&cross_entropy(&logits, &[Some(2), Some(0)], Some(&w)).unwrap()),
        (a + 3.0 * b) / 4.0,
    );
    // Ignored positions do not count.
    close(
        scalar(&cross_entropy(&logits, &[Some(2), None], None).unwrap()),
        a,
    );
    let ls = log_softmax(&logits)
        .unwrap()
        .exp()
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    close(ls[0] as f64, 1.0);
}

#[test]
fn binary_cross_entropy_by_hand() {
    let logits = t2(&[&[0.0, 2.0]]);
    let targets = t2(&[&[1.0, 0.0]]);
    // ln 2 and 2 + ln(1 + e^-2).
    let want = (2f64.ln() + 2.0 + (1.0 + (-2f64).exp()).ln()) / 2.0;
    close(
        scalar(&binary_cross_entropy(&logits, &targets).unwrap()),
        want,
    );
    // Large logits stay finite (the stable form).
    let big = binary_cross_entropy(&t2(&[&[80.0, -80.0]]), &t2(&[&[0.0, 1.0]])).unwrap();
    close(scalar(&big), 80.0);
}

#[test]
fn regression_standardizes_targets_and_destandardizes_predictions() {
    let mut c = config(Task::Regression, HeadKind::Linear, &[]);
    c.target_mean = 10.0;
    c.target_std = 2.0;
    let heads = Heads::new(vec![c], 0, &Device::Cpu).unwrap();
    let head = &heads.heads[0];
    let z = t2(&[&[1.0], &[-0.5]]);
    let p = head.predict(&z, None, None).unwrap();
    assert_eq!(p, vec![Prediction::Number(12.0), Prediction::Number(9.0)]);
    // Targets 12 and 9 are z = 1 and -0.5: zero loss; 14 is z = 2: (1)² / 2.
    close(
        scalar(
            &head
                .loss(&z, &[&Target::Number(12.0), &Target::Number(9.0)], None)
                .unwrap(),
        ),
        0.0,
    );
    close(
        scalar(
            &head
                .loss(&z, &[&Target::Number(14.0), &Target::Number(9.0)], None)
                .unwrap(),
        ),
        0.5,
    );
}

#[test]
fn classification_and_multi_label_predictions() {
    let heads = Heads::new(
        vec![config(Task::Classification, HeadKind::Linear, &["a", "b"])],
        0,
        &Device::Cpu,
    )
    .unwrap();
    let p = heads.heads[0]
        .predict(&t2(&[&[0.0, 2.0]]), None, None)
        .unwrap();
    let Prediction::Class {
        index,
        label,
        probabilities,
    } = &p[0]
    else {
        panic!()
    };
    assert_eq!((*index, label.as_str()), (1, "b"));
    close(probabilities[1] as f64, 1.0 / (1.0 + (-2f64).exp()));

    let heads = Heads::new(
        vec![config(Task::MultiLabel, HeadKind::Linear, &["x", "y", "z"])],
        0,
        &Device::Cpu,
    )
    .unwrap();
    let p = heads.heads[0]
        .predict(&t2(&[&[1.0, -1.0, 0.5]]), None, None)
        .unwrap();
    let Prediction::Labels {
        indices, labels, ..
    } = &p[0]
    else {
        panic!()
    };
    assert_eq!(indices, &vec![0, 2]);
    assert_eq!(labels, &vec!["x".to_string(), "z".to_string()]);
    let loss = heads.heads[0]
        .loss(&t2(&[&[0.0, 0.0, 0.0]]), &[&Target::Labels(vec![1])], None)
        .unwrap();
    close(scalar(&loss), 2f64.ln());
}

#[test]
fn tagging_aligns_word_labels_to_first_sub_tokens() {
    // [CLS] "wash" "##ington" "visited" [SEP] [PAD]: words 0 and 1.
    let word_ids = vec![vec![None, Some(0), Some(0), Some(1), None, None]];
    assert_eq!(first_subtokens(&word_ids)[0].get(&0), Some(&1));
    let heads = Heads::new(
        vec![config(Task::Tagging, HeadKind::Token, &["O", "B-LOC"])],
        0,
        &Device::Cpu,
    )
    .unwrap();
    let head = &heads.heads[0];
    // Only positions 1 (target B-LOC) and 3 (target O) count; the rest carry large
    // "wrong" logits that would dominate if they were not ignored.
    let rows: Vec<[f32; 2]> = vec![
        [0.0, 9.0],
        [0.0, 0.0],
        [9.0, 0.0],
        [1.0, 0.0],
        [0.0, 9.0],
        [0.0, 9.0],
    ];
    let out = Tensor::from_vec(rows.concat(), (1, 6, 2), &Device::Cpu).unwrap();
    let loss = head
        .loss(&out, &[&Target::Tags(vec![1, 0])], Some(&word_ids))
        .unwrap();
    let want = (2f64.ln() + (1.0 + (-1f64).exp()).ln()) / 2.0;
    close(scalar(&loss), want);
    // Prediction reads each word's first sub-token; a word cut off by truncation is "O".
    let p = head.predict(&out, Some(&word_ids), Some(&[3])).unwrap();
    let Prediction::Tags { tags, .. } = &p[0] else {
        panic!()
    };
    assert_eq!(
        tags,
        &vec!["O".to_string(), "O".to_string(), "O".to_string()]
    );
}

#[test]
fn every_head_tensor_gets_a_gradient() {
    for (task, kind, labels) in [
        (
            Task::Classification,
            HeadKind::Mlp { hidden: 4 },
            vec!["a", "b"],
        ),
        (Task::Classification, HeadKind::Linear, vec!["a", "b"]),
        (
            Task::MultiLabel,
            HeadKind::Mlp { hidden: 4 },
            vec!["a", "b"],
        ),
        (Task::Regression, HeadKind::Linear, vec![]),
    ] {
        let mut c = config(task, kind, &labels);
        c.dropout = 0.1;
        let heads = Heads::new(vec![c], 3, &Device::Cpu).unwrap();
        let head = &heads.heads[0];
        let xs = t2(&[&[1.0, -2.0, 0.5], &[0.3, 0.2, -1.0]]);
        let out = head.forward(&xs, None).unwrap();
        let targets = match task {
            Task::Classification => vec![Target::Class(0), Target::Class(1)],
            Task::MultiLabel => vec![Target::Labels(vec![0]), Target::Labels(vec![1])],
            _ => vec![Target::Number(1.0), Target::Number(-2.0)],
        };
        let refs: Vec<&Target> = targets.iter().collect();
        let grads = head.loss(&out, &refs, None).unwrap().backward().unwrap();
        for (name, var) in heads.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{task}: no gradient for {name}"));
            let n = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{task}: zero gradient for {name}");
        }
    }
}

#[test]
fn heads_round_trip_through_safetensors() {
    let mut c = config(
        Task::Classification,
        HeadKind::Mlp { hidden: 5 },
        &["a", "b", "c"],
    );
    c.class_weights = Some(vec![1.0, 2.0, 0.5]);
    let heads = Heads::new(vec![c.clone()], 11, &Device::Cpu).unwrap();
    let names: Vec<String> = heads.vars().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec![
            "out.hidden.bias",
            "out.hidden.weight",
            "out.out.bias",
            "out.out.weight"
        ]
    );
    let bytes = heads.to_safetensors().unwrap();
    let back = Heads::from_safetensors(&bytes, &Device::Cpu).unwrap();
    assert_eq!(back.configs(), vec![c]);
    let xs = t2(&[&[1.0, 2.0, 3.0]]);
    let a = heads.heads[0]
        .forward(&xs, None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let b = back.heads[0]
        .forward(&xs, None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(a, b);
    // Seeded init: the same seed gives the same head, another seed another.
    let again = Heads::new(
        vec![config(
            Task::Classification,
            HeadKind::Mlp { hidden: 5 },
            &["a", "b", "c"],
        )],
        11,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        again.heads[0]
            .forward(&xs, None)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        a
    );
}
