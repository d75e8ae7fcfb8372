//! The blueprint compiler: one test per kind of error, one with many at once, and the
//! defaults it fills in.

use tailor_modules::blueprint::{
    Blueprint, BlueprintError, ClassWeighting, ColumnType, DatasetSchema, ErrorKind, Fusion,
    HeadKind, compile,
};
use tailor_modules::catalog::{Catalog, Modality, Task};
use tailor_modules::schedule::ScheduleKind;

fn schema() -> DatasetSchema {
    DatasetSchema::new([
        ("clause", ColumnType::Text),
        ("clause_type", ColumnType::Category),
        ("risk", ColumnType::Number),
        ("topics", ColumnType::MultiLabel),
        ("entities", ColumnType::Tags),
        (
            "scan",
            ColumnType::File {
                modality: Modality::Image,
            },
        ),
    ])
}

const GOOD: &str = r#"{ "name": "contract-clause-type",
  "inputs":  [{ "name": "clause", "modality": "text",
                "encoder": { "module": "text/minilm-l6", "pooling": "mean", "max_tokens": 256 } }],
  "fusion":  { "kind": "concat" },
  "outputs": [{ "name": "clause_type", "task": "classification", "decoder": { "module": "head/mlp" } }],
  "adaptation": { "method": "lora", "rank": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "value"] },
  "training": { "epochs": 10, "batch_size": 16, "learning_rate": 2e-4, "seed": 7,
                "validation_split": 0.2, "early_stopping": { "metric": "macro_f1", "patience": 3 } } }"#;

fn good() -> serde_json::Value {
    serde_json::from_str(GOOD).unwrap()
}

/// Compiles `bp` and returns its errors (panics if it compiles).
fn errors(bp: serde_json::Value) -> Vec<BlueprintError> {
    let bp: Blueprint = serde_json::from_value(bp).unwrap();
    compile(&bp, &Catalog::builtin(), &schema()).expect_err("expected errors")
}

fn only(bp: serde_json::Value) -> BlueprintError {
    let errs = errors(bp);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn the_design_example_compiles_with_its_settings() {
    let bp = Blueprint::parse(GOOD).unwrap();
    let c = compile(&bp, &Catalog::builtin(), &schema()).unwrap();
    assert_eq!(c.inputs[0].module, "text/minilm-l6");
    assert_eq!(c.inputs[0].int_param("max_tokens"), Some(256));
    assert_eq!(c.inputs[0].text_param("pooling"), Some("mean"));
    assert_eq!(c.inputs[0].width, Some(384));
    assert_eq!(c.fusion, Fusion::Concat);
    assert_eq!(c.outputs[0].task, Task::Classification);
    assert_eq!(c.outputs[0].head, HeadKind::Mlp { hidden: 256 });
    let lora = c.adaptation.unwrap();
    assert_eq!(
        (lora.rank, lora.alpha, lora.targets.clone()),
        (8, 16.0, vec!["query".into(), "value".into()])
    );
    assert_eq!(c.training.epochs, Some(10));
    assert_eq!(c.training.learning_rate, 2e-4);
    assert_eq!(c.training.seed, 7);
    assert_eq!(c.training.early_stopping.metric, "macro_f1");
}

#[test]
fn yaml_is_accepted_too() {
    let yaml = r#"
name: risk
inputs:
  - name: clause
    modality: text
    encoder: { module: text/minilm-l6 }
outputs:
  - name: risk
    task: regression
    decoder: { module: head/linear }
"#;
    let bp = Blueprint::parse(yaml).unwrap();
    let c = compile(&bp, &Catalog::builtin(), &schema()).unwrap();
    assert_eq!(c.outputs[0].task, Task::Regression);
    assert_eq!(c.training.early_stopping.metric, "rmse");
}

#[test]
fn a_minimal_blueprint_gets_defaults_for_small_data() {
    let mut bp = good();
    bp.as_object_mut().unwrap().remove("adaptation");
    bp.as_object_mut().unwrap().remove("training");
    bp.as_object_mut().unwrap().remove("fusion");
    let bp: Blueprint = serde_json::from_value(bp).unwrap();
    let c = compile(&bp, &Catalog::builtin(), &schema()).unwrap();
    let lora = c.adaptation.unwrap();
    assert_eq!((lora.rank, lora.alpha, lora.dropout), (8, 16.0, 0.1));
    assert_eq!(lora.targets, vec!["query".to_string(), "value".to_string()]);
    let t = &c.training;
    assert_eq!(
        (t.batch_size, t.learning_rate, t.head_learning_rate),
        (16, 5e-4, 2e-3)
    );
    assert_eq!(
        (t.warmup_ratio, t.schedule, t.max_grad_norm),
        (0.1, ScheduleKind::Linear, 1.0)
    );
    assert_eq!(t.class_weights, ClassWeighting::Balanced);
    assert_eq!(
        (t.early_stopping.metric.as_str(), t.early_stopping.patience),
        ("macro_f1", 3)
    );
    assert_eq!(t.epochs_for(50), 30);
    assert_eq!(t.epochs_for(500), 16);
    assert_eq!(t.epochs_for(5000), 4);
}

#[test]
fn unknown_module_suggests_the_closest() {
    let mut bp = good();
    bp["outputs"][0]["decoder"]["module"] = "head/mpl".into();
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::UnknownModule);
    assert_eq!(
        e.to_string(),
        r#"outputs[0].decoder.module: unknown module "head/mpl"; did you mean "head/mlp"?"#
    );
}

#[test]
fn a_decoder_where_an_encoder_belongs_is_named() {
    let mut bp = good();
    bp["inputs"][0]["encoder"] = serde_json::json!({ "module": "head/mlp" });
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::WrongModuleKind);
    assert_eq!(e.field, "inputs[0].encoder.module");
}

#[test]
fn a_modality_the_encoder_cannot_take() {
    let mut bp = good();
    bp["inputs"][0] = serde_json::json!({ "name": "scan", "modality": "image",
        "encoder": { "module": "text/minilm-l6" } });
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::WrongModality);
    assert_eq!(
        e.to_string(),
        r#"inputs[0].encoder.module: "text/minilm-l6" takes text, not image"#
    );
}

#[test]
fn an_unknown_modality() {
    let mut bp = good();
    bp["inputs"][0]["modality"] = "txt".into();
    let errs = errors(bp);
    assert!(
        errs.iter().any(|e| e.kind == ErrorKind::UnknownModality
            && e.field == "inputs[0].modality"
            && e.message.contains("did you mean \"text\"")),
        "{errs:#?}"
    );
}

#[test]
fn a_task_the_decoder_cannot_do() {
    let mut bp = good();
    bp["outputs"][0] = serde_json::json!({ "name": "entities", "task": "tagging",
        "decoder": { "module": "head/mlp" } });
    bp["training"]["early_stopping"]["metric"] = "entity_f1".into();
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::UnsupportedTask);
    assert_eq!(e.field, "outputs[0].decoder.module");
    assert!(e.message.contains("cannot do tagging"), "{e}");
}

#[test]
fn an_unknown_task() {
    let mut bp = good();
    bp["outputs"][0]["task"] = "clasification".into();
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::UnknownTask);
    assert!(
        e.message.ends_with("did you mean \"classification\"?"),
        "{e}"
    );
}

#[test]
fn a_lora_target_the_encoder_lacks() {
    let mut bp = good();
    bp["adaptation"]["targets"] = serde_json::json!(["query", "gate_proj"]);
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::UnknownLoraTarget);
    assert_eq!(e.field, "adaptation.targets[1]");
    assert!(e.message.contains("has no layer \"gate_proj\""), "{e}");
}

#[test]
fn a_parameter_out_of_bounds() {
    let mut bp = good();
    bp["adaptation"]["rank"] = 0.into();
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::OutOfBounds);
    assert_eq!(e.to_string(), "adaptation.rank: 0 is below the minimum 1");

    let mut bp = good();
    bp["inputs"][0]["encoder"]["max_tokens"] = 1000.into();
    let e = only(bp);
    assert_eq!(
        e.to_string(),
        "inputs[0].encoder.max_tokens: 1000 is above the maximum 512"
    );
}

#[test]
fn zero_epochs_is_an_evaluation_only_run() {
    let mut bp = good();
    bp["training"]["epochs"] = 0.into();
    let bp: Blueprint = serde_json::from_value(bp).unwrap();
    let c = compile(&bp, &Catalog::builtin(), &schema()).unwrap();
    assert_eq!(c.training.epochs, Some(0));
    assert_eq!(c.training.epochs_for(500), 0);

    let mut bp = good();
    bp["training"]["epochs"] = (-1).into();
    let e = only(bp);
    assert_eq!(e.to_string(), "training.epochs: -1 is below the minimum 0");
}

#[test]
fn a_bad_choice_and_an_unknown_parameter() {
    let mut bp = good();
    bp["inputs"][0]["encoder"]["pooling"] = "max".into();
    bp["inputs"][0]["encoder"]["max_token"] = 64.into();
    let errs = errors(bp);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter()
            .any(|e| e.kind == ErrorKind::InvalidValue && e.field == "inputs[0].encoder.pooling")
    );
    assert!(errs.iter().any(|e| e.kind == ErrorKind::UnknownParameter
        && e.field == "inputs[0].encoder.max_token"
        && e.message.contains("did you mean \"max_tokens\"")));
}

#[test]
fn a_missing_column_lists_the_columns() {
    let bp: Blueprint = serde_json::from_str(GOOD).unwrap();
    let small = DatasetSchema::new([("text", ColumnType::Text), ("label", ColumnType::Category)]);
    let errs = compile(&bp, &Catalog::builtin(), &small).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].kind, ErrorKind::MissingColumn);
    assert_eq!(
        errs[0].to_string(),
        r#"inputs[0].name: column "clause" is not in the dataset (columns: text, label)"#
    );
    assert_eq!(errs[1].field, "outputs[0].name");
}

#[test]
fn a_column_of_the_wrong_type() {
    let mut bp = good();
    bp["outputs"][0] = serde_json::json!({ "name": "clause", "task": "regression",
        "decoder": { "module": "head/linear" } });
    let errs = errors(bp);
    assert!(
        errs.iter().any(|e| e.kind == ErrorKind::WrongColumnType
            && e.field == "outputs[0].name"
            && e.message
                .contains("holds text, a regression output needs numbers")),
        "{errs:#?}"
    );

    let mut bp = good();
    bp["inputs"][0]["name"] = "risk".into();
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::WrongColumnType);
    assert_eq!(e.field, "inputs[0].name");
}

#[test]
fn duplicate_names() {
    let mut bp = good();
    let output = bp["outputs"][0].clone();
    bp["outputs"].as_array_mut().unwrap().push(output);
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::Duplicate);
    assert_eq!(e.field, "outputs[1].name");
}

#[test]
fn no_outputs() {
    let mut bp = good();
    bp["outputs"] = serde_json::json!([]);
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::NoOutputs);
    assert_eq!(e.field, "outputs");
}

#[test]
fn validation_split_outside_its_range() {
    for bad in [0.0, 0.6, -0.1] {
        let mut bp = good();
        bp["training"]["validation_split"] = bad.into();
        let e = only(bp);
        assert_eq!(e.kind, ErrorKind::OutOfBounds);
        assert_eq!(e.field, "training.validation_split");
    }
}

#[test]
fn an_early_stopping_metric_of_another_task() {
    let mut bp = good();
    bp["training"]["early_stopping"]["metric"] = "rmse".into();
    let e = only(bp);
    assert_eq!(e.kind, ErrorKind::UnknownMetric);
    assert_eq!(e.field, "training.early_stopping.metric");
    assert!(e.message.contains("not a metric of classification"), "{e}");
}

#[test]
fn tagging_needs_a_single_text_input() {
    let mut bp = good();
    bp["inputs"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "name": "scan", "modality": "image",
        "encoder": { "module": "text/minilm-l6" } }));
    bp["outputs"][0] = serde_json::json!({ "name": "entities", "task": "tagging",
        "decoder": { "module": "head/token" } });
    bp["training"]["early_stopping"]["metric"] = "entity_f1".into();
    let errs = errors(bp);
    assert!(
        errs.iter()
            .any(|e| e.kind == ErrorKind::UnsupportedTask && e.field == "outputs[0].task"),
        "{errs:#?}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let bp = serde_json::json!({ "name": "x",
        "inputs": [{ "name": "clause", "modality": "text", "encoder": { "module": "text/minilm-l7", "max_tokens": 4 } },
                   { "name": "clause", "modality": "text", "encoder": { "module": "text/minilm-l6", "max_tokens": 4 } }],
        "outputs": [{ "name": "price", "task": "regression", "decoder": { "module": "head/token" } }],
        "adaptation": { "rank": 0, "targets": ["qery"] },
        "training": { "validation_split": 0.9, "batch_size": 0, "early_stopping": { "metric": "f1" } } });
    let errs = errors(bp);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    for f in [
        "inputs[0].encoder.module",
        "inputs[1].name",
        "inputs[1].encoder.max_tokens",
        "outputs[0].decoder.module",
        "outputs[0].name",
        "adaptation.rank",
        "adaptation.targets[0]",
        "training.validation_split",
        "training.batch_size",
        "training.early_stopping.metric",
    ] {
        assert!(fields.contains(&f), "{f} missing from {errs:#?}");
    }
    assert!(
        errs.iter()
            .any(|e| e.message.contains("did you mean \"text/minilm-l6\""))
    );
    assert!(
        errs.iter()
            .any(|e| e.message.contains("did you mean \"query\""))
    );
}

#[test]
fn unparseable_documents_are_one_parse_error() {
    let e = Blueprint::parse(r#"{ "name": 3 }"#).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Parse);
    let e = Blueprint::parse("name: x\nunknown_key: 1\n").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Parse);
}

#[test]
fn the_catalog_settings_match_what_the_compiler_checks() {
    use tailor_modules::catalog::ParamKind;
    let catalog = Catalog::builtin();
    let set = |field: &str, v: serde_json::Value| {
        let mut bp = good();
        let mut at = &mut bp;
        let parts: Vec<&str> = field.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            if at.get(*p).is_none() {
                at[*p] = serde_json::json!({});
            }
            at = &mut at[*p];
        }
        at[parts[parts.len() - 1]] = v;
        let bp: Blueprint = serde_json::from_value(bp).unwrap();
        compile(&bp, &catalog, &schema())
    };
    let mut checked = 0;
    for s in &catalog.settings {
        if s.field == "training.seed" {
            continue;
        }
        let (min, max, step) = match &s.kind {
            ParamKind::Integer { min, max, .. } => (*min as f64, *max as f64, 1.0),
            ParamKind::Number { min, max, .. } => (*min, *max, 0.01),
            _ => continue,
        };
        let num = |x: f64| serde_json::json!(x);
        let int = |x: f64| serde_json::json!(x as i64);
        let v = |x: f64| if step == 1.0 { int(x) } else { num(x) };
        assert!(
            set(&s.field, v(max)).is_ok(),
            "{} at its maximum {max}",
            s.field
        );
        let over = set(&s.field, v(max + step)).unwrap_err();
        assert!(
            over.iter()
                .any(|e| e.field == s.field && e.kind == ErrorKind::OutOfBounds),
            "{}: {over:#?}",
            s.field
        );
        if s.exclusive_min {
            assert!(
                set(&s.field, v(min)).is_err(),
                "{} at its exclusive minimum",
                s.field
            );
        } else {
            assert!(
                set(&s.field, v(min)).is_ok(),
                "{} at its minimum {min}",
                s.field
            );
            assert!(
                set(&s.field, v(min - step)).is_err(),
                "{} below its minimum",
                s.field
            );
        }
        checked += 1;
    }
    assert!(checked >= 12, "{checked}");
    // The catalog JSON carries them for the portal.
    assert!(
        catalog
            .to_json()
            .contains("\"training.early_stopping.patience\"")
    );
}
