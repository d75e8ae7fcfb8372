//! How a blueprint names a tabular input's dataset columns, and what the compiler checks.

use tailor_modules::blueprint::{
    Blueprint, ColumnType, DatasetSchema, ErrorKind, Fusion, ParamValue, compile,
};
use tailor_modules::catalog::Catalog;
use tailor_modules::tabular;

fn schema() -> DatasetSchema {
    DatasetSchema::new([
        ("age", ColumnType::Number),
        ("ward", ColumnType::Category),
        ("note", ColumnType::Text),
        ("outcome", ColumnType::Category),
    ])
}

fn blueprint(encoder: serde_json::Value, fusion: &str) -> Blueprint {
    Blueprint::from_json(
        &serde_json::json!({
            "name": "t",
            "inputs": [
                { "name": "vitals", "modality": "tabular", "encoder": encoder },
                { "name": "note", "modality": "text", "encoder": { "module": "text/minilm-l6" } }
            ],
            "fusion": { "kind": fusion },
            "outputs": [{ "name": "outcome", "task": "classification",
                          "decoder": { "module": "head/mlp" } }]
        })
        .to_string(),
    )
    .unwrap()
}

#[test]
fn listed_columns_are_read_and_the_input_name_is_a_label() {
    let bp = blueprint(
        serde_json::json!({ "module": "tabular/mlp", "columns": ["age", "ward"] }),
        "attention",
    );
    let c = compile(&bp, &Catalog::builtin(), &schema()).unwrap();
    assert_eq!(c.fusion, Fusion::Attention);
    assert_eq!(
        c.inputs[0].params.get("columns"),
        Some(&ParamValue::List(vec!["age".into(), "ward".into()]))
    );
    assert_eq!(tabular::columns(&c.inputs[0]), vec!["age", "ward"]);
    // The portal's text field: names between commas.
    let bp = blueprint(
        serde_json::json!({ "module": "tabular/mlp", "columns": "age, ward" }),
        "concat",
    );
    let c = compile(&bp, &Catalog::builtin(), &schema()).unwrap();
    assert_eq!(tabular::columns(&c.inputs[0]), vec!["age", "ward"]);
}

#[test]
fn without_columns_the_input_reads_its_own_column() {
    let bp = Blueprint::from_json(
        &serde_json::json!({
            "name": "t",
            "inputs": [{ "name": "age", "modality": "tabular", "encoder": { "module": "tabular/mlp" } }],
            "outputs": [{ "name": "outcome", "task": "classification", "decoder": { "module": "head/linear" } }]
        })
        .to_string(),
    )
    .unwrap();
    let c = compile(&bp, &Catalog::builtin(), &schema()).unwrap();
    assert_eq!(tabular::columns(&c.inputs[0]), vec!["age"]);
}

#[test]
fn each_bad_column_is_named() {
    let bp = blueprint(
        serde_json::json!({ "module": "tabular/mlp", "columns": ["age", "agee", "note", "age"] }),
        "concat",
    );
    let errors = compile(&bp, &Catalog::builtin(), &schema()).unwrap_err();
    let find = |field: &str| {
        errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error on {field}: {errors:#?}"))
    };
    let missing = find("inputs[0].encoder.columns[1]");
    assert_eq!(missing.kind, ErrorKind::MissingColumn);
    assert!(
        missing.message.contains("did you mean \"age\""),
        "{}",
        missing.message
    );
    let text = find("inputs[0].encoder.columns[2]");
    assert_eq!(text.kind, ErrorKind::WrongColumnType);
    assert!(text.message.contains("holds text"), "{}", text.message);
    assert_eq!(
        find("inputs[0].encoder.columns[3]").kind,
        ErrorKind::Duplicate
    );
    let bp = blueprint(
        serde_json::json!({ "module": "tabular/mlp", "columns": [1, 2] }),
        "concat",
    );
    let errors = compile(&bp, &Catalog::builtin(), &schema()).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.field == "inputs[0].encoder.columns" && e.kind == ErrorKind::InvalidValue),
        "{errors:#?}"
    );
}
