//! `tailor train BLUEPRINT DATA [--test DATA] [--out DIR]`: trains a blueprint on a local
//! CSV/TSV/JSONL file without the platform (no database, queue or object store), reports
//! the tuned model against its frozen-encoder baseline and writes the model version.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use tailor_modules::blueprint::{Blueprint, ColumnType, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, Modality, Task, load_encoder};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::package::{self, DatasetInfo, PackageInfo};
use tailor_modules::train::{Event, Phase};

pub struct TrainArgs {
    pub blueprint: PathBuf,
    pub data: PathBuf,
    pub test: Option<PathBuf>,
    pub out: Option<PathBuf>,
}

type Records = Vec<HashMap<String, String>>;

fn read(path: &Path) -> anyhow::Result<(Vec<u8>, Records)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8(bytes.clone())
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let records = package::read_table(&path.display().to_string(), &text)?;
    if records.is_empty() {
        bail!("{} has no rows", path.display());
    }
    Ok((bytes, records))
}

/// Column types as the compiler needs them: outputs typed by their task, other columns
/// numbers when every value parses as one, text otherwise.
fn schema(bp: &Blueprint, records: &[HashMap<String, String>]) -> DatasetSchema {
    let columns: BTreeSet<&String> = records.iter().flat_map(|r| r.keys()).collect();
    let tasks: HashMap<&str, Option<Task>> = bp
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), Task::parse(&o.task)))
        .collect();
    DatasetSchema::new(columns.into_iter().map(|name| {
        let values = || records.iter().filter_map(|r| r.get(name));
        let numeric = values().all(|v| v.trim().parse::<f64>().is_ok());
        let ty = match tasks.get(name.as_str()).copied().flatten() {
            Some(Task::Classification) => ColumnType::Category,
            Some(Task::MultiLabel) => ColumnType::MultiLabel,
            Some(Task::Tagging) => ColumnType::Tags,
            Some(Task::Regression) if numeric => ColumnType::Number,
            _ if numeric => ColumnType::Number,
            _ => ColumnType::Text,
        };
        (name.clone(), ty)
    }))
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.blueprint)
        .with_context(|| format!("reading {}", args.blueprint.display()))?;
    let bp = Blueprint::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}: {}", args.blueprint.display(), e.field, e.message))?;
    let (data_bytes, records) = read(&args.data)?;
    let catalog = Catalog::builtin();
    let compiled = match compile(&bp, &catalog, &schema(&bp, &records)) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!(
                "{} has {} error(s):",
                args.blueprint.display(),
                errors.len()
            );
            for e in &errors {
                eprintln!("  {}: {}", e.field, e.message);
            }
            std::process::exit(2);
        }
    };
    if compiled.inputs.iter().any(|i| i.modality != Modality::Text) {
        bail!("tailor train reads text inputs only in this build");
    }
    let data = package::examples_from_table(&compiled, &records, None)?;
    let test = match &args.test {
        Some(path) => {
            let (_, records) = read(path)?;
            Some(package::examples_from_table(
                &compiled,
                &records,
                Some(&data.labels),
            )?)
        }
        None => None,
    };
    let assets = PathBuf::from(
        std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into()),
    );
    println!(
        "{}: {} rows from {}{}; base checkpoints from {}",
        compiled.name,
        data.rows.len(),
        args.data.display(),
        test.as_ref()
            .map(|t| format!(", {} test rows", t.rows.len()))
            .unwrap_or_default(),
        assets.display()
    );

    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(&catalog, &assets, input, lora, seed);
    let start = Instant::now();
    let mut out = std::io::stderr();
    let result = train_and_evaluate(
        &compiled,
        &data,
        test.as_ref(),
        &factory,
        EvaluateOptions::default(),
        &mut |event| {
            match event {
                Event::Step(s) => {
                    let _ = write!(
                        out,
                        "\r{} step {}/{} (epoch {}): loss {:.4}, lr {:.2e}   ",
                        phase(s.phase),
                        s.step,
                        s.total_steps,
                        s.epoch + 1,
                        s.loss,
                        s.lr
                    );
                    let _ = out.flush();
                }
                Event::Epoch(e) => {
                    let _ = writeln!(
                        out,
                        "\r{} epoch {}/{}: train loss {:.4}, validation loss {:.4}, validation {} {:.4}{} [{:.0}s]",
                        phase(e.phase),
                        e.epoch + 1,
                        e.epochs,
                        e.train_loss,
                        e.validation_loss,
                        e.metric,
                        e.value,
                        if e.improved { " (best so far)" } else { "" },
                        start.elapsed().as_secs_f64()
                    );
                }
                _ => {}
            }
            ControlFlow::Continue(())
        },
    )?;
    let Evaluation::Done { model, report } = result else {
        bail!("training was cancelled");
    };
    println!("\n{}", package::report_table(&report));

    let out_dir = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}-model", compiled.name)));
    let info = PackageInfo {
        dataset: DatasetInfo {
            name: args
                .data
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            version: "local file".into(),
            sha256: package::file_sha256(&data_bytes),
            rows: data.rows.len(),
        },
        base_license: None,
    };
    let set = package::build(&model, &report, &info)?;
    package::write_dir(&set, &out_dir).with_context(|| format!("writing {}", out_dir.display()))?;
    println!(
        "model version written to {} ({} files + manifest.json) in {:.0}s",
        out_dir.display(),
        set.files().count(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn phase(p: Phase) -> &'static str {
    match p {
        Phase::Tuned => "tuned   ",
        Phase::Baseline => "baseline",
    }
}
