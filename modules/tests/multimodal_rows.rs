//! Rows of a dataset whose inputs are files of its archive and table cells: how manifest
//! records become input values, and the compiler's check that a file input reads a column
//! whose files have the input's modality.

use std::collections::{BTreeSet, HashMap};

use tailor_modules::blueprint::{Blueprint, DatasetSchema, ErrorKind, compile};
use tailor_modules::catalog::{Catalog, Modality, ModuleKind, ModuleSpec, WeightSource};
use tailor_modules::encoder::Cell;
use tailor_modules::package::{ArchiveFiles, RowSources, examples_from_records};
use tailor_modules::train::InputValue;

/// The builtin catalog, plus a stand-in image encoder when the catalog has none yet (the
/// compiler only reads the entry).
fn catalog() -> Catalog {
    let mut catalog = Catalog::builtin();
    if !catalog
        .modules
        .iter()
        .any(|m| m.modality == Some(Modality::Image))
    {
        catalog.modules.push(ModuleSpec {
            id: "image/test".into(),
            kind: ModuleKind::Encoder,
            title: "test".into(),
            description: "test".into(),
            modality: Some(Modality::Image),
            output_width: Some(8),
            tasks: vec![],
            lora_targets: vec![],
            default_lora_targets: vec![],
            params: vec![],
            weights: WeightSource::None,
        });
    }
    catalog
}

fn image_module(catalog: &Catalog) -> String {
    catalog
        .modules
        .iter()
        .find(|m| m.modality == Some(Modality::Image))
        .map(|m| m.id.clone())
        .unwrap()
}

fn blueprint(catalog: &Catalog) -> Blueprint {
    serde_json::from_value(serde_json::json!({
        "name": "scan-triage",
        "inputs": [
            { "name": "scan", "modality": "image", "encoder": { "module": image_module(catalog) } },
            { "name": "note", "modality": "text", "encoder": { "module": "text/minilm-l6" } },
            { "name": "vitals", "modality": "tabular",
              "encoder": { "module": "tabular/mlp", "columns": ["age", "ward"] } }
        ],
        "outputs": [{ "name": "label", "task": "classification",
                      "decoder": { "module": "head/linear" } }]
    }))
    .unwrap()
}

fn columns() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        ("scan", "file", Some("image")),
        ("note", "text", None),
        ("age", "number", None),
        ("ward", "category", None),
        ("label", "category", None),
    ]
}

fn record(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn files_cells_and_gaps_become_input_values() {
    let catalog = catalog();
    let bp = blueprint(&catalog);
    let schema = DatasetSchema::from_dataset_files(columns(), &bp);
    let compiled = compile(&bp, &catalog, &schema).unwrap();
    let mut files = ArchiveFiles::new();
    files.insert("scans/a.png", b"png a".to_vec());
    files.insert("scans/b.png", b"png b".to_vec());
    let records = vec![
        record(&[
            ("scan", "scans/a.png"),
            ("note", "cough"),
            ("age", "61"),
            ("ward", "B"),
            ("label", "urgent"),
        ]),
        record(&[
            ("scan", "./scans\\b.png"),
            ("note", ""),
            ("age", ""),
            ("ward", "A"),
            ("label", "routine"),
        ]),
        record(&[
            ("scan", ""),
            ("note", "fine"),
            ("age", ""),
            ("ward", ""),
            ("label", "routine"),
        ]),
        // The same file again: its bytes are shared, not copied.
        record(&[
            ("scan", "scans/a.png"),
            ("note", "x"),
            ("age", "7"),
            ("ward", "A"),
            ("label", "urgent"),
        ]),
    ];
    let numbers: BTreeSet<String> = ["age".to_string()].into();
    let sources = RowSources {
        files: Some(&files),
        number_columns: Some(&numbers),
    };
    let examples = examples_from_records(&compiled, &records, None, sources).unwrap();
    assert_eq!(examples.labels[0], ["routine", "urgent"]);
    let rows = &examples.rows;
    match &rows[0].inputs[0] {
        InputValue::File(f) => {
            assert_eq!(f.path, "scans/a.png");
            assert_eq!(&*f.bytes, b"png a");
            assert_eq!(f.extension(), "png");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rows[0].inputs[1], InputValue::Text("cough".into()));
    assert_eq!(
        rows[0].inputs[2],
        InputValue::Cells(vec![Cell::Number(61.0), Cell::Category("B".into())])
    );
    match &rows[1].inputs[0] {
        InputValue::File(f) => assert_eq!(f.path, "scans/b.png"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rows[1].inputs[2],
        InputValue::Cells(vec![Cell::Missing, Cell::Category("A".into())])
    );
    assert_eq!(rows[2].inputs[0], InputValue::Missing);
    assert_eq!(rows[2].inputs[2], InputValue::Missing);
    let (InputValue::File(first), InputValue::File(again)) =
        (&rows[0].inputs[0], &rows[3].inputs[0])
    else {
        panic!("files expected");
    };
    assert!(std::sync::Arc::ptr_eq(&first.bytes, &again.bytes));

    // Without the number columns given, they are inferred from the values.
    let inferred = examples_from_records(
        &compiled,
        &records,
        None,
        RowSources {
            files: Some(&files),
            number_columns: None,
        },
    )
    .unwrap();
    assert_eq!(inferred.rows[0].inputs[2], rows[0].inputs[2]);
}

#[test]
fn a_file_missing_from_the_archive_or_no_archive_is_an_error() {
    let catalog = catalog();
    let bp = blueprint(&catalog);
    let schema = DatasetSchema::from_dataset_files(columns(), &bp);
    let compiled = compile(&bp, &catalog, &schema).unwrap();
    let records = vec![record(&[
        ("scan", "scans/gone.png"),
        ("note", "n"),
        ("age", "1"),
        ("ward", "A"),
        ("label", "x"),
    ])];
    let files = ArchiveFiles::new();
    let sources = RowSources {
        files: Some(&files),
        number_columns: None,
    };
    let err = examples_from_records(&compiled, &records, None, sources).unwrap_err();
    assert_eq!(
        err.to_string(),
        "row 1: input `scan` names the file \"scans/gone.png\", which is not in the dataset's archive"
    );
    let err = examples_from_records(&compiled, &records, None, RowSources::default()).unwrap_err();
    assert!(err.to_string().contains("must be a ZIP archive"), "{err}");
}

#[test]
fn an_input_reading_files_of_another_modality_names_the_field_and_column() {
    let catalog = catalog();
    let bp = blueprint(&catalog);
    let mut cols = columns();
    cols[0].2 = Some("audio");
    let schema = DatasetSchema::from_dataset_files(cols, &bp);
    let errors = compile(&bp, &catalog, &schema).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].kind, ErrorKind::WrongColumnType);
    assert_eq!(errors[0].field, "inputs[0].name");
    assert_eq!(
        errors[0].message,
        "column \"scan\" holds audio files, a image input needs image files"
    );
    // A file column whose kind is unknown takes the input's.
    let mut cols = columns();
    cols[0].2 = Some("other");
    assert!(compile(&bp, &catalog, &DatasetSchema::from_dataset_files(cols, &bp)).is_ok());
}

#[test]
fn the_estimate_costs_non_text_inputs_roughly_and_says_so() {
    use tailor_modules::estimate::{DataShape, estimate};
    let catalog = catalog();
    let bp = blueprint(&catalog);
    let compiled = compile(
        &bp,
        &catalog,
        &DatasetSchema::from_dataset_files(columns(), &bp),
    )
    .unwrap();
    let data = DataShape {
        rows: 200,
        ..Default::default()
    };
    let all = estimate(&compiled, &data);
    assert_eq!(all.rough_inputs, ["scan", "vitals"]);
    let mut text_only = compiled.clone();
    text_only.inputs.retain(|i| i.name == "note");
    let text = estimate(&text_only, &data);
    assert!(text.rough_inputs.is_empty());
    // An image per row costs far more than a 256-token MiniLM pass (0.8 vs ~0.03 GFLOP
    // per token × 256), and brings its weights.
    assert!(
        all.tuned_seconds > text.tuned_seconds * 1.05,
        "{all:?} {text:?}"
    );
    assert!(all.encoder_parameters > text.encoder_parameters + 4_000_000);
    assert!(all.peak_memory_bytes > text.peak_memory_bytes);
}
