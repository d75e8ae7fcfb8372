//! The deployment files against the code: every `TAILOR__SECTION__KEY` that the compose
//! file, the Kubernetes manifests and the Dockerfiles set is a setting the `Settings`
//! struct reads (with a value of its type), and the configuration reference in
//! docs/operations.md is the one generated from `services/core/src/settings.rs`
//! (`TAILOR_BLESS=1 cargo test --test deploy` rewrites it).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tailor_core::Settings;
use tailor_core::settings::ObjectStoreKind;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Loads `vars` as the environment the way `Settings::load` does; returns the settings
/// and the keys that no field of `Settings` reads.
fn load_env(vars: &BTreeMap<String, String>) -> Result<(Settings, Vec<String>), String> {
    let map: HashMap<String, String> = vars.clone().into_iter().collect();
    let raw: Value = config::Config::builder()
        .add_source(
            config::Environment::with_prefix("TAILOR")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(map)),
        )
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    let settings: Settings = serde_ignored::deserialize(raw, |path| unknown.push(path.to_string()))
        .map_err(|e| e.to_string())?;
    Ok((settings, unknown))
}

/// Compose's interpolation with the defaults a fresh install uses (required variables
/// get a placeholder).
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else if inner.contains(":?") {
            out.push_str(&"x".repeat(64));
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out.replace("$$", "$")
}

fn yaml_scalar(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        _ => "value-from-elsewhere".into(),
    }
}

/// Every `TAILOR__…` variable of a YAML file: keys of mappings (compose environments,
/// ConfigMap data) and `env` entries (`name`, with `value` or a reference).
fn yaml_settings(path: &Path) -> BTreeMap<String, String> {
    fn walk(value: &serde_yaml::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_yaml::Value::Mapping(map) => {
                if let (Some(serde_yaml::Value::String(name)), true) = (
                    map.get("name"),
                    map.contains_key("value") || map.contains_key("valueFrom"),
                ) && name.starts_with("TAILOR__")
                {
                    let value = map.get("value").map(yaml_scalar);
                    out.insert(
                        name.clone(),
                        value.unwrap_or_else(|| "value-from-a-secret".into()),
                    );
                }
                for (k, v) in map {
                    if let serde_yaml::Value::String(k) = k
                        && k.starts_with("TAILOR__")
                    {
                        out.insert(k.clone(), interpolate(&yaml_scalar(v)));
                    }
                    walk(v, out);
                }
            }
            serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut value = serde_yaml::Value::deserialize(doc).unwrap();
        value.apply_merge().unwrap();
        walk(&value, &mut out);
    }
    out
}

use serde::Deserialize;

/// `ENV TAILOR__…=value` lines of a Dockerfile.
fn dockerfile_settings(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap().replace("\\\n", " ");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with("ENV ")) {
        for pair in line.split_whitespace().skip(1) {
            if let Some((k, v)) = pair.split_once('=')
                && k.starts_with("TAILOR__")
            {
                out.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    out
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

#[test]
fn every_setting_the_deployment_files_set_is_read_by_the_settings_struct() {
    let deploy = Path::new(ROOT).join("deploy");
    let mut files = vec![deploy.join("compose.yaml")];
    files_under(&deploy.join("k8s"), "yaml", &mut files);
    let mut checked = 0;
    for file in &files {
        let vars = yaml_settings(file);
        if vars.is_empty() {
            continue;
        }
        let (settings, unknown) =
            load_env(&vars).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            unknown.is_empty(),
            "{} sets settings that Settings does not have: {unknown:?}",
            file.display()
        );
        checked += vars.len();
        if file.ends_with("compose.yaml") {
            assert_eq!(settings.object_store.kind, ObjectStoreKind::S3);
            assert_eq!(settings.object_store.s3.endpoint, "http://minio:9000");
            assert!(settings.object_store.s3.allow_http);
        }
    }
    for name in ["Dockerfile", "Dockerfile.cuda"] {
        let vars = dockerfile_settings(&deploy.join(name));
        assert!(!vars.is_empty(), "{name} sets TAILOR__ variables");
        let (settings, unknown) = load_env(&vars).unwrap();
        assert!(unknown.is_empty(), "{name}: {unknown:?}");
        assert_eq!(settings.jobs.assets_dir, PathBuf::from("/models"));
        checked += vars.len();
    }
    assert!(checked > 40, "only {checked} settings found");
    // The check itself: a misspelt key is reported, a value of the wrong type refused.
    let typo = BTreeMap::from([("TAILOR__JOBS__WORKER_PROT".to_owned(), "8002".to_owned())]);
    assert_eq!(load_env(&typo).unwrap().1, vec!["jobs.worker_prot"]);
    let wrong = BTreeMap::from([("TAILOR__JOBS__WORKER_PORT".to_owned(), "many".to_owned())]);
    assert!(load_env(&wrong).is_err());
}

// ------------------------------------------------------------ configuration reference

struct Field {
    name: String,
    ty: String,
    doc: String,
}

/// The structs and enums of settings.rs: fields with their doc comments, enum variants.
fn parse_settings(src: &str) -> (HashMap<String, Vec<Field>>, HashMap<String, Vec<String>>) {
    let mut structs = HashMap::new();
    let mut enums = HashMap::new();
    let mut lines = src.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        if let Some(name) = line
            .strip_prefix("pub struct ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            let mut fields = Vec::new();
            let (mut doc, mut skip) = (Vec::new(), false);
            for line in lines.by_ref() {
                if line == "}" {
                    break;
                }
                if let Some(d) = line.strip_prefix("///") {
                    doc.push(d.trim().to_owned());
                } else if line.starts_with("#[serde(skip") {
                    skip = true;
                } else if let Some(field) = line.strip_prefix("pub ") {
                    let (name, ty) = field.trim_end_matches(',').split_once(": ").unwrap();
                    if !skip {
                        fields.push(Field {
                            name: name.to_owned(),
                            ty: ty.to_owned(),
                            doc: doc.join(" "),
                        });
                    }
                    doc.clear();
                    skip = false;
                }
            }
            structs.insert(name.to_owned(), fields);
        } else if let Some(name) = line
            .strip_prefix("pub enum ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            let mut variants = Vec::new();
            for line in lines.by_ref() {
                if line == "}" {
                    break;
                }
                if let Some(v) = line.strip_suffix(',')
                    && !v.starts_with("//")
                {
                    variants.push(v.to_lowercase());
                }
            }
            enums.insert(name.to_owned(), variants);
        }
    }
    (structs, enums)
}

fn toml_values(file: &str) -> Value {
    let path = Path::new(ROOT).join("config").join(file);
    config::Config::builder()
        .add_source(config::File::from(path))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap()
}

fn shown(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => format!("`{s}`"),
        Some(Value::Null) | None => String::new(),
        Some(other) => format!("`{other}`"),
    }
}

struct Row {
    key: String,
    ty: String,
    sample: String,
    doc: String,
}

fn rows(
    structs: &HashMap<String, Vec<Field>>,
    enums: &HashMap<String, Vec<String>>,
    name: &str,
    prefix: &str,
    out: &mut Vec<Row>,
) {
    for field in &structs[name] {
        let key = if prefix.is_empty() {
            field.name.clone()
        } else {
            format!("{prefix}.{}", field.name)
        };
        if structs.contains_key(&field.ty) {
            rows(structs, enums, &field.ty, &key, out);
            continue;
        }
        let (ty, sample) = match field.ty.as_str() {
            "String" => ("text".to_owned(), "x".to_owned()),
            "PathBuf" => ("path".to_owned(), "/x".to_owned()),
            "SecretString" | "Option<SecretString>" => ("secret".to_owned(), "x".to_owned()),
            "bool" => ("`true` / `false`".to_owned(), "true".to_owned()),
            "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => {
                ("integer".to_owned(), "1".to_owned())
            }
            other => match enums.get(other) {
                Some(variants) => (
                    variants
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    variants[0].clone(),
                ),
                None => panic!("settings.rs: no reference type for `{}: {other}`", key),
            },
        };
        out.push(Row {
            key,
            ty,
            sample,
            doc: field.doc.clone(),
        });
    }
}

const BEGIN: &str =
    "<!-- settings:begin (generated by `TAILOR_BLESS=1 cargo test --test deploy`) -->";
const END: &str = "<!-- settings:end -->";

fn reference() -> (String, Vec<Row>) {
    let src =
        std::fs::read_to_string(Path::new(ROOT).join("services/core/src/settings.rs")).unwrap();
    let (structs, enums) = parse_settings(&src);
    let mut all = Vec::new();
    rows(&structs, &enums, "Settings", "", &mut all);
    let (base, production) = (toml_values("base.toml"), toml_values("production.toml"));
    let pick = |v: &Value, key: &str| key.split('.').try_fold(v, |v, k| v.get(k)).cloned();
    let mut text = String::from(
        "| setting | environment variable | type | base.toml | production.toml | what it is |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for row in &all {
        let env = format!("TAILOR__{}", row.key.replace('.', "__").to_uppercase());
        text.push_str(&format!(
            "| `{}` | `{env}` | {} | {} | {} | {} |\n",
            row.key,
            row.ty,
            shown(pick(&base, &row.key).as_ref()),
            shown(pick(&production, &row.key).as_ref()),
            row.doc.replace('|', "\\|"),
        ));
    }
    (text, all)
}

#[test]
fn the_configuration_reference_in_the_operations_guide_matches_the_settings_struct() {
    let (table, rows) = reference();
    // The generator reads the struct right: each key it lists is one Settings reads.
    let vars: BTreeMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                format!("TAILOR__{}", r.key.replace('.', "__").to_uppercase()),
                r.sample.clone(),
            )
        })
        .collect();
    let (_, unknown) = load_env(&vars).expect("every listed setting takes its sample value");
    assert!(unknown.is_empty(), "{unknown:?}");
    assert!(rows.len() > 40, "{} settings", rows.len());

    let path = Path::new(ROOT).join("docs/operations.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (head, rest) = doc.split_once(BEGIN).expect("the begin marker");
    let (current, tail) = rest.split_once(END).expect("the end marker");
    let wanted = format!("\n{table}");
    if std::env::var("TAILOR_BLESS").is_ok() {
        std::fs::write(&path, format!("{head}{BEGIN}{wanted}{END}{tail}")).unwrap();
        return;
    }
    assert!(
        current == wanted,
        "docs/operations.md's configuration reference is out of date: run `TAILOR_BLESS=1 cargo test --test deploy`"
    );
}
