//! Assembling a model, apart from HTTP: a blueprint as the user wrote it (JSON, YAML or
//! the page's form) is parsed, compiled against the module catalog and the columns of a
//! dataset version, checked against what the data can support (every class needs rows to
//! hold out), and costed (time and memory, [`tailor_modules::estimate`]).
//!
//! Every problem is reported at once, each naming its field (`outputs[0].decoder.module`)
//! in a sentence a user can act on; the live validation of the assembly page and the start
//! of a job use the same code, so what the page accepts is what a job runs.

use serde::Serialize;
use serde_json::Value;
use tailor_core::{
    Error, OrgId,
    datasets::DatasetVersion,
    error::{FieldError, OrNotFound},
};
use tailor_modules::{
    blueprint::{Blueprint, BlueprintError, CompiledBlueprint, DatasetSchema, ErrorKind, compile},
    catalog::{Catalog, Modality, Task},
    estimate::{DataShape, Estimate, estimate},
};
use uuid::Uuid;

use crate::state::AppState;

/// What a job starts from: the blueprint as checked, the model it trains, and its cost.
#[derive(Debug, Clone, Serialize)]
pub struct PreparedJob {
    /// The parsed blueprint, normalised (what the user wrote, re-serialized).
    pub blueprint: Value,
    /// The blueprint's name: the model the new version belongs to.
    pub model_name: String,
    pub estimate: Estimate,
}

/// Loads the dataset version (in `org`), compiles `spec` against it, checks that the data
/// can support the blueprint and estimates the job. Every problem is an error naming its
/// field; several come back together as [`Error::Invalid`].
#[tracing::instrument(skip(state, spec), fields(org_id = %org))]
pub async fn prepare_job(
    state: &AppState,
    org: OrgId,
    spec: &Value,
    dataset_version_id: Uuid,
) -> Result<PreparedJob, Error> {
    let blueprint = parse_spec(spec)?;
    let version = tailor_core::blueprints::dataset_version(&state.pool, org, dataset_version_id)
        .await?
        .or_not_found()
        .map_err(|_| {
            Error::validation(
                "dataset_version_id",
                "This dataset version does not exist in your organization.",
            )
        })?;
    let assessment = assess(&blueprint, Some(&version));
    match (assessment.errors.is_empty(), assessment.estimate) {
        (true, Some(estimate)) => Ok(PreparedJob {
            model_name: blueprint.name.trim().to_owned(),
            blueprint: assessment.blueprint,
            estimate,
        }),
        _ => Err(Error::invalid(assessment.errors)),
    }
}

/// A blueprint from the JSON API: an object, or a string holding JSON or YAML.
pub fn parse_spec(spec: &Value) -> Result<Blueprint, Error> {
    let parsed = match spec {
        Value::String(text) => Blueprint::parse(text),
        Value::Object(_) => serde_json::from_value::<Blueprint>(spec.clone())
            .map_err(|e| parse_error(e.to_string())),
        Value::Null => {
            return Err(Error::validation(
                "spec",
                "Send the blueprint as `spec`: a JSON object, or JSON or YAML text.",
            ));
        }
        _ => {
            return Err(Error::validation(
                "spec",
                "The blueprint must be a JSON object, or JSON or YAML text.",
            ));
        }
    };
    parsed.map_err(|e| Error::validation("spec", parse_message(&e.message)))
}

fn parse_error(message: String) -> BlueprintError {
    BlueprintError {
        kind: ErrorKind::Parse,
        field: String::new(),
        message,
    }
}

fn parse_message(raw: &str) -> String {
    format!("The blueprint could not be read: {raw}.")
}

/// The outcome of checking a blueprint: every problem, and when there is none, the
/// compiled blueprint and (with a dataset version) the estimate.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// The blueprint normalised (defaults not filled in: what the user chose).
    pub blueprint: Value,
    /// The same blueprint as YAML, for the page's YAML view.
    pub yaml: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compiled: Option<CompiledBlueprint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    pub errors: Vec<FieldError>,
}

/// Compiles `blueprint` against the catalog and `version`'s columns (or, without a
/// version, against columns that fit it, so only the catalog is checked), then checks the
/// data and estimates the job.
pub fn assess(blueprint: &Blueprint, version: Option<&DatasetVersion>) -> Assessment {
    let catalog = Catalog::builtin();
    let schema = match version {
        Some(v) => schema_of(v, blueprint),
        None => fitting_schema(blueprint),
    };
    let mut errors = Vec::new();
    let compiled = match compile(blueprint, &catalog, &schema) {
        Ok(c) => Some(c),
        Err(found) => {
            errors.extend(found.iter().map(user_error));
            None
        }
    };
    if let Some(v) = version {
        errors.extend(data_checks(blueprint, v));
    }
    let estimate = match (&compiled, version) {
        (Some(c), Some(v)) if errors.is_empty() => Some(estimate(c, &data_shape(v, c))),
        _ => None,
    };
    Assessment {
        yaml: to_yaml(blueprint),
        blueprint: to_json(blueprint),
        compiled,
        estimate,
        errors,
    }
}

/// The blueprint as JSON without the settings left unset (`null`), which mean "default".
pub fn to_json(blueprint: &Blueprint) -> Value {
    fn clean(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(clean);
            }
            Value::Array(items) => items.iter_mut().for_each(clean),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(blueprint).unwrap_or(Value::Null);
    clean(&mut value);
    value
}

/// The blueprint as YAML, in the order of its fields, without unset settings.
pub fn to_yaml(blueprint: &Blueprint) -> String {
    fn clean(v: &mut serde_yaml::Value) {
        match v {
            serde_yaml::Value::Mapping(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(clean);
            }
            serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(clean),
            _ => {}
        }
    }
    let mut value = serde_yaml::to_value(blueprint).unwrap_or(serde_yaml::Value::Null);
    clean(&mut value);
    serde_yaml::to_string(&value).unwrap_or_default()
}

/// The columns of a stored version as the compiler sees them; a file column carries the
/// modality its files were profiled as, so an input of another modality is refused.
pub fn schema_of(version: &DatasetVersion, blueprint: &Blueprint) -> DatasetSchema {
    let schema = &version.schema.0;
    let profile = &version.profile.0;
    let modality = |name: &str| {
        profile
            .columns
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.modality)
            .map(modality_name)
    };
    if schema.columns.is_empty() {
        DatasetSchema::from_dataset_files(
            profile
                .columns
                .iter()
                .map(|c| (c.name.as_str(), c.column_type.as_str(), modality(&c.name))),
            blueprint,
        )
    } else {
        DatasetSchema::from_dataset_files(
            schema
                .columns
                .iter()
                .map(|c| (c.name.as_str(), c.column_type.as_str(), modality(&c.name))),
            blueprint,
        )
    }
}

/// The catalog's name of a dataset modality (`None` never: `other` is left to the input).
fn modality_name(m: tailor_datasets::Modality) -> &'static str {
    match m {
        tailor_datasets::Modality::Image => "image",
        tailor_datasets::Modality::Audio => "audio",
        tailor_datasets::Modality::Video => "video",
        tailor_datasets::Modality::Sensor => "sensor",
        tailor_datasets::Modality::Pointcloud => "pointcloud",
        tailor_datasets::Modality::Other => "other",
    }
}

/// Columns that fit the blueprint's own inputs and outputs: checking against them finds
/// only the problems that do not depend on a dataset.
fn fitting_schema(blueprint: &Blueprint) -> DatasetSchema {
    let mut columns: Vec<(&str, &str)> = Vec::new();
    for input in &blueprint.inputs {
        let ty = match Modality::parse(&input.modality) {
            Some(Modality::Text) | None => "text",
            Some(Modality::Tabular) => "number",
            Some(_) => "file",
        };
        columns.push((&input.name, ty));
    }
    for output in &blueprint.outputs {
        let ty = match Task::parse(&output.task) {
            Some(Task::MultiLabel) => "multi_label",
            Some(Task::Regression) => "number",
            Some(Task::Tagging) => "text",
            Some(Task::Classification) | None => "category",
        };
        columns.push((&output.name, ty));
    }
    DatasetSchema::from_dataset(columns, blueprint)
}

/// A compiler error in the user's words: a sentence, and the label problem said plainly.
fn user_error(e: &BlueprintError) -> FieldError {
    let message = match e.kind {
        ErrorKind::NoOutputs => {
            "No column is used as the label: map one column to an output.".to_string()
        }
        ErrorKind::NoInputs => {
            "No column is used as an input: map a text column to an input.".to_string()
        }
        ErrorKind::Parse => parse_message(&e.message),
        _ => sentence(&e.message),
    };
    FieldError {
        field: if e.field.is_empty() {
            "spec".into()
        } else {
            e.field.clone()
        },
        message,
    }
}

/// Upper-cases the first letter and ends with a full stop (or the question it asks).
fn sentence(s: &str) -> String {
    let s = s.trim();
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out = format!("{}{}", first.to_uppercase(), chars.as_str());
    if !out.ends_with(['.', '?', '!']) {
        out.push('.');
    }
    out
}

/// Fewest rows a class needs: one to train on and one to hold out for the report.
pub const MIN_ROWS_PER_CLASS: u64 = 2;

/// Whether the version's rows can support the blueprint's outputs: a label in every row,
/// at least two classes, and every class with rows to hold out.
pub fn data_checks(blueprint: &Blueprint, version: &DatasetVersion) -> Vec<FieldError> {
    let profile = &version.profile.0;
    let mut errors = Vec::new();
    if version.row_count < 2 {
        errors.push(FieldError {
            field: "dataset_version_id".into(),
            message: format!(
                "The dataset has {} row(s); training needs at least 2, one of them held out \
                 for the report. Upload more examples.",
                version.row_count
            ),
        });
        return errors;
    }
    for (i, output) in blueprint.outputs.iter().enumerate() {
        let Some(task) = Task::parse(&output.task) else {
            continue;
        };
        let Some(column) = profile.columns.iter().find(|c| c.name == output.name) else {
            continue;
        };
        let field = format!("outputs[{i}].name");
        let name = &output.name;
        if column.missing > 0 && task != Task::MultiLabel {
            errors.push(FieldError {
                field: field.clone(),
                message: format!(
                    "The label column \"{name}\" is empty in {} of {} rows; every row needs a \
                     label. Fill them in, or remove those rows and upload again.",
                    column.missing, version.row_count
                ),
            });
        }
        if !matches!(task, Task::Classification | Task::MultiLabel) {
            continue;
        }
        // Every class is listed when the column has no more distinct values than the
        // profile keeps; otherwise the rarest listed class bounds the unlisted ones.
        let values = &column.top_values;
        let complete = column.distinct.is_some_and(|d| d as usize <= values.len());
        if task == Task::Classification && complete && values.len() < 2 {
            let only = values
                .first()
                .map(|v| format!(" (\"{}\")", v.value))
                .unwrap_or_default();
            errors.push(FieldError {
                field: field.clone(),
                message: format!(
                    "The label column \"{name}\" has only one class{only}; a classifier needs \
                     examples of at least two. Add examples of the other classes, or map \
                     another column to the output."
                ),
            });
            continue;
        }
        let word = if task == Task::MultiLabel {
            "label"
        } else {
            "class"
        };
        let rare: Vec<_> = values
            .iter()
            .filter(|v| v.count < MIN_ROWS_PER_CLASS)
            .collect();
        match rare.as_slice() {
            [] if !complete && values.last().is_some_and(|v| v.count < MIN_ROWS_PER_CLASS) => {
                errors.push(FieldError {
                    field,
                    message: format!(
                        "The label column \"{name}\" has more than {} {word}es and some have \
                         only 1 example; each {word} needs at least {MIN_ROWS_PER_CLASS} so \
                         that some can be held out for the report. Add examples or merge the \
                         rare {word}es.",
                        values.len()
                    ),
                });
            }
            [] => {}
            [one] => errors.push(FieldError {
                field,
                message: format!(
                    "The label column \"{name}\" has a {word} \"{}\" with only {} example; each \
                     {word} needs at least {MIN_ROWS_PER_CLASS} so that some can be held out \
                     for the report. Add examples or merge the {word}.",
                    one.value, one.count
                ),
            }),
            many => {
                let listed = many
                    .iter()
                    .take(10)
                    .map(|v| format!("\"{}\"", v.value))
                    .collect::<Vec<_>>()
                    .join(", ");
                let more = if many.len() > 10 {
                    format!(" and {} more", many.len() - 10)
                } else {
                    String::new()
                };
                errors.push(FieldError {
                    field,
                    message: format!(
                        "The label column \"{name}\" has {} {word}es with only 1 example \
                         ({listed}{more}); each {word} needs at least {MIN_ROWS_PER_CLASS} so \
                         that some can be held out for the report. Add examples or merge \
                         those {word}es.",
                        many.len()
                    ),
                });
            }
        }
    }
    errors
}

/// The rows and text lengths of a version, for the estimate.
pub fn data_shape(version: &DatasetVersion, compiled: &CompiledBlueprint) -> DataShape {
    let profile = &version.profile.0;
    let mut shape = DataShape {
        rows: version.row_count.max(0) as usize,
        ..Default::default()
    };
    for input in &compiled.inputs {
        if let Some(length) = profile
            .columns
            .iter()
            .find(|c| c.name == input.name)
            .and_then(|c| c.length.as_ref())
        {
            shape.mean_chars.push((input.name.clone(), length.mean));
            shape
                .max_chars
                .push((input.name.clone(), length.max as f64));
        }
    }
    shape
}

/// A ready-made starting point the assembly page offers: a blueprint whose column names
/// are placeholders the user maps to the columns of their dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Preset {
    /// Also the key of its title and description in the catalogs
    /// (`blueprints.preset.{id}`, `blueprints.preset.{id}.hint`).
    pub id: String,
    pub blueprint: Value,
}

/// Legal document classification, clause extraction and medical note triage.
pub fn presets() -> Vec<Preset> {
    let lora = serde_json::json!({
        "method": "lora", "rank": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "value"]
    });
    vec![
        Preset {
            id: "legal_document_classification".into(),
            blueprint: serde_json::json!({
                "name": "legal-document-type",
                "description": "Sorts legal documents (contracts, letters, filings) into your categories.",
                "inputs": [{ "name": "text", "modality": "text",
                             "encoder": { "module": "text/minilm-l6", "max_tokens": 128, "pooling": "mean" } }],
                "fusion": { "kind": "concat" },
                "outputs": [{ "name": "label", "task": "classification",
                              "decoder": { "module": "head/linear" } }],
                "adaptation": lora,
                "training": { "batch_size": 16, "validation_split": 0.2,
                              "early_stopping": { "metric": "macro_f1", "patience": 3 } }
            }),
        },
        Preset {
            id: "clause_extraction".into(),
            blueprint: serde_json::json!({
                "name": "clause-extraction",
                "description": "Marks clause spans in contract text, one BIO tag per word (B-TERM, I-TERM, O).",
                "inputs": [{ "name": "text", "modality": "text",
                             "encoder": { "module": "text/minilm-l6", "max_tokens": 128, "pooling": "mean" } }],
                "fusion": { "kind": "concat" },
                "outputs": [{ "name": "tags", "task": "tagging",
                              "decoder": { "module": "head/token" } }],
                "adaptation": lora,
                "training": { "batch_size": 16, "validation_split": 0.2,
                              "early_stopping": { "metric": "entity_f1", "patience": 3 } }
            }),
        },
        Preset {
            id: "medical_note_triage".into(),
            blueprint: serde_json::json!({
                "name": "medical-note-triage",
                "description": "Sorts clinical notes by urgency; rare urgent classes are weighed up.",
                "inputs": [{ "name": "note", "modality": "text",
                             "encoder": { "module": "text/minilm-l6", "max_tokens": 128, "pooling": "mean" } }],
                "fusion": { "kind": "concat" },
                "outputs": [{ "name": "urgency", "task": "classification",
                              "decoder": { "module": "head/mlp", "hidden": 128, "dropout": 0.1 } }],
                "adaptation": lora,
                "training": { "batch_size": 16, "validation_split": 0.2, "class_weights": "balanced",
                              "early_stopping": { "metric": "macro_f1", "patience": 3 } }
            }),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_compile_against_columns_that_fit_them() {
        for preset in presets() {
            let bp = parse_spec(&preset.blueprint).unwrap();
            let a = assess(&bp, None);
            assert!(a.errors.is_empty(), "{}: {:?}", preset.id, a.errors);
        }
    }

    #[test]
    fn compiler_messages_become_sentences() {
        assert_eq!(
            sentence("unknown module \"x\"; did you mean \"y\"?"),
            "Unknown module \"x\"; did you mean \"y\"?"
        );
        assert_eq!(
            sentence("a blueprint needs a name"),
            "A blueprint needs a name."
        );
    }

    #[test]
    fn specs_parse_from_objects_json_and_yaml_text() {
        let object = serde_json::json!({ "name": "a", "inputs": [], "outputs": [] });
        assert_eq!(parse_spec(&object).unwrap().name, "a");
        let yaml = Value::String("name: b\ninputs: []\noutputs: []\n".into());
        assert_eq!(parse_spec(&yaml).unwrap().name, "b");
        let err = parse_spec(&serde_json::json!({ "name": "a", "colour": 1 })).unwrap_err();
        assert_eq!(err.field(), Some("spec"));
        assert!(err.public_message().contains("colour"), "{err:?}");
    }

    #[test]
    fn without_a_dataset_only_the_catalog_is_checked() {
        let bp = parse_spec(&serde_json::json!({
            "name": "a",
            "inputs": [{ "name": "text", "modality": "text",
                         "encoder": { "module": "text/minilm-l7" } }],
            "outputs": []
        }))
        .unwrap();
        let a = assess(&bp, None);
        let fields: Vec<_> = a.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["outputs", "inputs[0].encoder.module"],
            "{:?}",
            a.errors
        );
        assert!(
            a.errors[0]
                .message
                .starts_with("No column is used as the label")
        );
        assert!(a.errors[1].message.contains("text/minilm-l6"));
        assert!(a.estimate.is_none());
    }
}
