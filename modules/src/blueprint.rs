//! Blueprints — the model a team assembles in the portal (DESIGN.md §3) — and the compiler
//! that checks one against the module catalog and the dataset before it can be saved.
//!
//! [`compile`] never stops at the first problem: it returns every error at once, each
//! naming the field it is about (`outputs[0].decoder.module`), so the portal can mark all
//! of them on the page in one round trip. What it returns on success has every default
//! filled in, so training never guesses.
//!
//! Defaults are chosen for 50–500 labelled rows without tuning:
//! - LoRA rank 8, alpha 16 (scale 2), dropout 0.1 on `query`/`value`: the LoRA paper's
//!   setting, few enough parameters (~75k on MiniLM) not to memorize 50 rows.
//! - Learning rate 5e-4 for adapters (LoRA tolerates ~10× a full fine-tune's rate) and
//!   2e-3 for the freshly initialized heads, which start from nothing.
//! - Batch 16, 10% linear warm-up then linear decay, gradient clipping at norm 1.0,
//!   weight decay 0.01.
//! - Epochs scaled to the dataset: `clamp(ceil(8000 / rows), 4, 30)` — about 500 optimizer
//!   steps whatever the size, so 50 rows get 30 epochs and 5,000 rows get 4.
//! - 20% stratified validation split, early stopping with patience 3 on the task's usual
//!   metric (macro F1, micro F1, RMSE, entity F1), never before a third of the epochs has
//!   run, the best epoch's weights kept.
//! - Class weights "balanced" (inverse frequency): small industry sets are rarely balanced,
//!   and macro F1 — the default target — rewards the rare classes.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::catalog::{
    Catalog, Modality, ModuleKind, ModuleSpec, ParamKind, SettingSpec, Task, closest,
};
use crate::metrics;
use crate::schedule::ScheduleKind;

// ---------------------------------------------------------------------------------------
// What users write.

/// A blueprint as written (JSON or YAML). Nothing here is checked yet: see [`compile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blueprint {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub inputs: Vec<InputSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<FusionSpec>,
    #[serde(default)]
    pub outputs: Vec<OutputSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptation: Option<AdaptationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The dataset column this input reads.
    pub name: String,
    pub modality: String,
    pub encoder: ModuleRef,
}

/// A module by catalog id, with its parameters beside it (`"pooling": "mean"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleRef {
    pub module: String,
    #[serde(flatten)]
    pub params: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusionSpec {
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The dataset column this output predicts.
    pub name: String,
    pub task: String,
    pub decoder: ModuleRef,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptationSpec {
    /// `lora` (the default) or `none` (train the heads only).
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub rank: Option<i64>,
    #[serde(default)]
    pub alpha: Option<f64>,
    #[serde(default)]
    pub dropout: Option<f64>,
    #[serde(default)]
    pub targets: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    #[serde(default)]
    pub epochs: Option<i64>,
    #[serde(default)]
    pub batch_size: Option<i64>,
    /// Learning rate of the adapters.
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Learning rate of the heads.
    #[serde(default)]
    pub head_learning_rate: Option<f64>,
    #[serde(default)]
    pub weight_decay: Option<f64>,
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    /// `linear`, `cosine` or `constant` (after warm-up).
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub validation_split: Option<f64>,
    /// `balanced` or `none`.
    #[serde(default)]
    pub class_weights: Option<String>,
    #[serde(default)]
    pub early_stopping: Option<EarlyStoppingSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingSpec {
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub patience: Option<i64>,
}

impl Blueprint {
    pub fn from_json(text: &str) -> Result<Self, BlueprintError> {
        serde_json::from_str(text).map_err(|e| BlueprintError::parse(e.to_string()))
    }

    pub fn from_yaml(text: &str) -> Result<Self, BlueprintError> {
        serde_yaml::from_str(text).map_err(|e| BlueprintError::parse(e.to_string()))
    }

    /// JSON when the text starts like JSON, YAML otherwise.
    pub fn parse(text: &str) -> Result<Self, BlueprintError> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Self::from_yaml(text)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The dataset the blueprint will be trained on.

/// The type of one dataset column, as the dataset library infers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ColumnType {
    Text,
    Category,
    Number,
    /// A set of labels per row.
    MultiLabel,
    /// One BIO tag per whitespace-separated word of a text column.
    Tags,
    /// A file per row (image, audio, sensor trace, point cloud).
    File {
        modality: Modality,
    },
}

impl ColumnType {
    pub fn describe(&self) -> String {
        match self {
            ColumnType::Text => "text".into(),
            ColumnType::Category => "categories".into(),
            ColumnType::Number => "numbers".into(),
            ColumnType::MultiLabel => "label sets".into(),
            ColumnType::Tags => "word tags".into(),
            ColumnType::File { modality } => format!("{modality} files"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    #[serde(flatten)]
    pub ty: ColumnType,
}

/// The columns of a dataset, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetSchema {
    pub columns: Vec<ColumnSchema>,
}

impl DatasetSchema {
    pub fn new(columns: impl IntoIterator<Item = (impl Into<String>, ColumnType)>) -> Self {
        Self {
            columns: columns
                .into_iter()
                .map(|(name, ty)| ColumnSchema {
                    name: name.into(),
                    ty,
                })
                .collect(),
        }
    }

    /// The schema of a stored dataset version as the compiler sees it, from each column's
    /// name and the dataset library's type name (`text`, `category`, `number`,
    /// `multi_label`, `file`). A text or category column that the blueprint names as a
    /// tagging output holds BIO tags; a file column takes the modality of the input that
    /// reads it. An unknown type name is kept as text, so the compiler names the column.
    pub fn from_dataset<'a>(
        columns: impl IntoIterator<Item = (&'a str, &'a str)>,
        blueprint: &Blueprint,
    ) -> Self {
        Self::from_dataset_files(columns.into_iter().map(|(n, t)| (n, t, None)), blueprint)
    }

    /// [`DatasetSchema::from_dataset`] where each column may also say what its files are
    /// (the dataset profile's modality: `image`, `audio`, `video`, `sensor`,
    /// `pointcloud`). A file column of a known modality keeps it, so an input of another
    /// modality that reads it is an error naming the field and the column; without one
    /// (or `other`) the column takes the modality of the input that reads it.
    pub fn from_dataset_files<'a>(
        columns: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a str>)>,
        blueprint: &Blueprint,
    ) -> Self {
        Self::new(columns.into_iter().map(|(name, ty, files)| {
            let tagging = blueprint
                .outputs
                .iter()
                .any(|o| o.name == name && Task::parse(&o.task) == Some(Task::Tagging));
            let ty = match ty {
                _ if tagging => ColumnType::Tags,
                "category" => ColumnType::Category,
                "number" => ColumnType::Number,
                "multi_label" => ColumnType::MultiLabel,
                "file" => ColumnType::File {
                    modality: files
                        .and_then(Modality::parse)
                        .filter(|m| *m != Modality::Text && *m != Modality::Tabular)
                        .or_else(|| {
                            blueprint
                                .inputs
                                .iter()
                                .find(|i| i.name == name)
                                .and_then(|i| Modality::parse(&i.modality))
                        })
                        .unwrap_or(Modality::Image),
                },
                _ => ColumnType::Text,
            };
            (name.to_owned(), ty)
        }))
    }

    pub fn get(&self, name: &str) -> Option<&ColumnType> {
        self.columns.iter().find(|c| c.name == name).map(|c| &c.ty)
    }

    fn names(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------
// Errors.

/// What kind of problem a [`BlueprintError`] is, for code that reacts to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Parse,
    UnknownModule,
    WrongModuleKind,
    UnknownModality,
    WrongModality,
    UnknownTask,
    UnsupportedTask,
    UnknownLoraTarget,
    UnknownParameter,
    InvalidValue,
    OutOfBounds,
    MissingColumn,
    WrongColumnType,
    Duplicate,
    NoInputs,
    NoOutputs,
    UnknownMetric,
}

/// One problem with a blueprint, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BlueprintError {
    pub kind: ErrorKind,
    /// Path of the field, e.g. `outputs[0].decoder.module`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl BlueprintError {
    fn new(kind: ErrorKind, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            field: field.into(),
            message: message.into(),
        }
    }

    fn parse(message: String) -> Self {
        Self::new(ErrorKind::Parse, "", message)
    }
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// What the compiler gives.

/// A parameter value after checking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Boolean(bool),
    Integer(i64),
    Number(f64),
    Text(String),
    /// Names (the dataset columns of a tabular input).
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledInput {
    pub name: String,
    pub modality: Modality,
    pub module: String,
    /// Every parameter of the module, defaults filled in.
    pub params: BTreeMap<String, ParamValue>,
    /// Width of the encoder's vectors when the catalog knows it.
    pub width: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledOutput {
    pub name: String,
    pub task: Task,
    pub module: String,
    pub head: HeadKind,
    pub dropout: f64,
}

macro_rules! param_getters {
    ($t:ty) => {
        impl $t {
            pub fn int_param(&self, name: &str) -> Option<i64> {
                match self.params.get(name)? {
                    ParamValue::Integer(v) => Some(*v),
                    _ => None,
                }
            }
            pub fn text_param(&self, name: &str) -> Option<&str> {
                match self.params.get(name)? {
                    ParamValue::Text(v) => Some(v),
                    _ => None,
                }
            }
            pub fn number_param(&self, name: &str) -> Option<f64> {
                match self.params.get(name)? {
                    ParamValue::Number(v) => Some(*v),
                    ParamValue::Integer(v) => Some(*v as f64),
                    _ => None,
                }
            }
        }
    };
}
param_getters!(CompiledInput);

/// The decoder architecture of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HeadKind {
    Linear,
    Mlp { hidden: usize },
    Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    Concat,
    Mean,
    /// A small trainable transformer layer over the inputs' tokens (see `crate::fusion`).
    Attention,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeighting {
    None,
    /// `rows / (classes × rows of the class)`, as scikit-learn's "balanced".
    Balanced,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub metric: String,
    /// Epochs without improvement before stopping (never before a third of the epochs
    /// has run); 0 turns early stopping off.
    pub patience: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSettings {
    /// `None`: scaled to the dataset by [`TrainingSettings::epochs_for`]. `Some(0)`: no
    /// optimizer steps at all — the heads keep their initial values and the run only
    /// evaluates (the platform times its own overhead with such jobs).
    pub epochs: Option<usize>,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub head_learning_rate: f64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub schedule: ScheduleKind,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub validation_split: f64,
    pub class_weights: ClassWeighting,
    pub early_stopping: EarlyStopping,
}

impl TrainingSettings {
    /// Epochs to run on `rows` training rows: the blueprint's, or about 500 optimizer steps
    /// at batch 16 (`clamp(ceil(8000 / rows), 4, 30)`).
    pub fn epochs_for(&self, rows: usize) -> usize {
        self.epochs
            .unwrap_or_else(|| 8000usize.div_ceil(rows.max(1)).clamp(4, 30))
    }
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            epochs: None,
            batch_size: 16,
            learning_rate: 5e-4,
            head_learning_rate: 2e-3,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            schedule: ScheduleKind::Linear,
            max_grad_norm: 1.0,
            seed: 42,
            validation_split: 0.2,
            class_weights: ClassWeighting::Balanced,
            early_stopping: EarlyStopping {
                metric: "loss".into(),
                patience: 3,
            },
        }
    }
}

/// A blueprint that passed every check, with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledBlueprint {
    pub name: String,
    pub inputs: Vec<CompiledInput>,
    pub fusion: Fusion,
    pub outputs: Vec<CompiledOutput>,
    /// `None` when the blueprint asks for no adaptation (heads only).
    pub adaptation: Option<LoraSettings>,
    pub training: TrainingSettings,
}

// ---------------------------------------------------------------------------------------
// The compiler.

/// Checks `blueprint` against the catalog and the dataset's columns. Returns every problem
/// found, not just the first.
pub fn compile(
    blueprint: &Blueprint,
    catalog: &Catalog,
    schema: &DatasetSchema,
) -> Result<CompiledBlueprint, Vec<BlueprintError>> {
    let mut c = Checker { errors: Vec::new() };
    let compiled = c.blueprint(blueprint, catalog, schema);
    if c.errors.is_empty() {
        Ok(compiled.expect("no errors means a compiled blueprint"))
    } else {
        Err(c.errors)
    }
}

struct Checker {
    errors: Vec<BlueprintError>,
}

impl Checker {
    fn err(&mut self, kind: ErrorKind, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(BlueprintError::new(kind, field, message));
    }

    fn blueprint(
        &mut self,
        bp: &Blueprint,
        catalog: &Catalog,
        schema: &DatasetSchema,
    ) -> Option<CompiledBlueprint> {
        if bp.name.trim().is_empty() {
            self.err(ErrorKind::InvalidValue, "name", "a blueprint needs a name");
        }
        if bp.inputs.is_empty() {
            self.err(
                ErrorKind::NoInputs,
                "inputs",
                "a blueprint needs at least one input",
            );
        }
        if bp.outputs.is_empty() {
            self.err(
                ErrorKind::NoOutputs,
                "outputs",
                "a blueprint needs at least one output",
            );
        }

        let mut seen = HashSet::new();
        let mut inputs = Vec::new();
        let mut encoders: Vec<Option<&ModuleSpec>> = Vec::new();
        for (i, input) in bp.inputs.iter().enumerate() {
            let at = format!("inputs[{i}]");
            if !seen.insert(input.name.as_str()) {
                self.err(
                    ErrorKind::Duplicate,
                    format!("{at}.name"),
                    format!("column \"{}\" is used twice", input.name),
                );
            }
            let (compiled, spec) = self.input(&at, input, catalog, schema);
            encoders.push(spec);
            inputs.push(compiled);
        }

        let fusion = match bp.fusion.as_ref().map(|f| f.kind.as_str()) {
            None | Some("concat") => Some(Fusion::Concat),
            Some("mean") => {
                let widths: HashSet<usize> = encoders
                    .iter()
                    .flatten()
                    .filter_map(|e| e.output_width)
                    .collect();
                if widths.len() > 1 {
                    self.err(
                        ErrorKind::InvalidValue,
                        "fusion.kind",
                        "\"mean\" needs encoders of equal width; use \"concat\"",
                    );
                }
                Some(Fusion::Mean)
            }
            Some("attention") => Some(Fusion::Attention),
            Some(other) => {
                let hint = did_you_mean(catalog.suggest(other, ModuleKind::Fusion));
                let kind = match catalog.get(other) {
                    Some(_) => ErrorKind::WrongModuleKind,
                    None => ErrorKind::UnknownModule,
                };
                self.err(
                    kind,
                    "fusion.kind",
                    format!("unknown fusion \"{other}\"{hint}"),
                );
                None
            }
        };

        let mut outputs = Vec::new();
        for (i, output) in bp.outputs.iter().enumerate() {
            let at = format!("outputs[{i}]");
            if !seen.insert(output.name.as_str()) {
                self.err(
                    ErrorKind::Duplicate,
                    format!("{at}.name"),
                    format!("column \"{}\" is used twice", output.name),
                );
            }
            outputs.push(self.output(&at, output, catalog, schema));
            if output.task == Task::Tagging.as_str() {
                let text_inputs = bp.inputs.iter().filter(|i| i.modality == "text").count();
                if bp.inputs.len() != 1 || text_inputs != 1 {
                    self.err(
                        ErrorKind::UnsupportedTask,
                        format!("{at}.task"),
                        "tagging needs exactly one input, a text column",
                    );
                }
            }
        }

        let adaptation = self.adaptation(bp.adaptation.as_ref(), &encoders);
        let tasks: Vec<Task> = outputs.iter().flatten().map(|o| o.task).collect();
        let training = self.training(bp.training.as_ref(), &tasks);

        Some(CompiledBlueprint {
            name: bp.name.clone(),
            inputs: inputs.into_iter().collect::<Option<Vec<_>>>()?,
            fusion: fusion?,
            outputs: outputs.into_iter().collect::<Option<Vec<_>>>()?,
            adaptation: adaptation?,
            training: training?,
        })
    }

    fn module<'c>(
        &mut self,
        field: &str,
        id: &str,
        kind: ModuleKind,
        catalog: &'c Catalog,
    ) -> Option<&'c ModuleSpec> {
        match catalog.get(id) {
            Some(spec) if spec.kind == kind => Some(spec),
            Some(spec) => {
                let hint = did_you_mean(catalog.suggest(id, kind));
                self.err(
                    ErrorKind::WrongModuleKind,
                    field,
                    format!(
                        "\"{id}\" is {} module, not {}{hint}",
                        article(spec.kind),
                        article(kind)
                    ),
                );
                None
            }
            None => {
                let hint = did_you_mean(catalog.suggest(id, kind));
                self.err(
                    ErrorKind::UnknownModule,
                    field,
                    format!("unknown module \"{id}\"{hint}"),
                );
                None
            }
        }
    }

    fn input<'c>(
        &mut self,
        at: &str,
        input: &InputSpec,
        catalog: &'c Catalog,
        schema: &DatasetSchema,
    ) -> (Option<CompiledInput>, Option<&'c ModuleSpec>) {
        let modality = Modality::parse(&input.modality);
        if modality.is_none() {
            let hint = did_you_mean(closest(
                &input.modality,
                Modality::ALL.iter().map(|m| m.as_str()),
            ));
            self.err(
                ErrorKind::UnknownModality,
                format!("{at}.modality"),
                format!("unknown modality \"{}\"{hint}", input.modality),
            );
        }
        let spec = self.module(
            &format!("{at}.encoder.module"),
            &input.encoder.module,
            ModuleKind::Encoder,
            catalog,
        );
        if let (Some(spec), Some(modality)) = (spec, modality)
            && spec.modality != Some(modality)
        {
            let takes = spec.modality.map(|m| m.as_str()).unwrap_or("nothing");
            self.err(
                ErrorKind::WrongModality,
                format!("{at}.encoder.module"),
                format!("\"{}\" takes {takes}, not {modality}", spec.id),
            );
        }
        // A tabular input may list its dataset columns (`columns`); its name is then a label.
        let lists_columns = input.encoder.params.contains_key("columns");
        if !lists_columns {
            self.input_column(at, &input.name, modality, schema);
        }
        let params =
            spec.and_then(|s| self.params(&format!("{at}.encoder"), s, &input.encoder.params));
        if lists_columns {
            match params.as_ref().and_then(|p| p.get("columns")) {
                Some(ParamValue::List(cols)) if !cols.is_empty() => {
                    let mut seen = HashSet::new();
                    for (k, col) in cols.iter().enumerate() {
                        let field = format!("{at}.encoder.columns[{k}]");
                        if !seen.insert(col) {
                            self.err(
                                ErrorKind::Duplicate,
                                &field,
                                format!("column \"{col}\" is listed twice"),
                            );
                        }
                        match schema.get(col) {
                            None => self.missing_column(&field, col, schema),
                            Some(ColumnType::Number | ColumnType::Category) => {}
                            Some(ty) => self.err(
                                ErrorKind::WrongColumnType,
                                &field,
                                format!(
                                    "column \"{col}\" holds {}, a tabular input needs numbers or categories",
                                    ty.describe()
                                ),
                            ),
                        }
                    }
                }
                Some(_) => self.input_column(at, &input.name, modality, schema),
                None => {}
            }
        }
        let compiled = match (spec, modality, params) {
            (Some(spec), Some(modality), Some(params)) => Some(CompiledInput {
                name: input.name.clone(),
                modality,
                module: spec.id.clone(),
                params,
                width: spec.output_width,
            }),
            _ => None,
        };
        (compiled, spec)
    }

    /// Checks that the column an input reads by its name exists and suits its modality.
    fn input_column(
        &mut self,
        at: &str,
        name: &str,
        modality: Option<Modality>,
        schema: &DatasetSchema,
    ) {
        match (schema.get(name), modality) {
            (None, _) => self.missing_column(&format!("{at}.name"), name, schema),
            (Some(ty), Some(modality)) => {
                let fits = match modality {
                    Modality::Text => *ty == ColumnType::Text,
                    Modality::Tabular => matches!(ty, ColumnType::Number | ColumnType::Category),
                    m => *ty == ColumnType::File { modality: m },
                };
                if !fits {
                    self.err(
                        ErrorKind::WrongColumnType,
                        format!("{at}.name"),
                        format!(
                            "column \"{}\" holds {}, a {modality} input needs {}",
                            name,
                            ty.describe(),
                            match modality {
                                Modality::Text => "text".to_string(),
                                Modality::Tabular => "numbers or categories".to_string(),
                                m => format!("{m} files"),
                            }
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    fn missing_column(&mut self, field: &str, name: &str, schema: &DatasetSchema) {
        let hint = did_you_mean(closest(
            name,
            schema.columns.iter().map(|c| c.name.as_str()),
        ));
        self.err(
            ErrorKind::MissingColumn,
            field,
            format!(
                "column \"{name}\" is not in the dataset (columns: {}){hint}",
                schema.names()
            ),
        );
    }

    fn output(
        &mut self,
        at: &str,
        output: &OutputSpec,
        catalog: &Catalog,
        schema: &DatasetSchema,
    ) -> Option<CompiledOutput> {
        let task = Task::parse(&output.task);
        if task.is_none() {
            let hint = did_you_mean(closest(&output.task, Task::ALL.iter().map(|t| t.as_str())));
            self.err(
                ErrorKind::UnknownTask,
                format!("{at}.task"),
                format!("unknown task \"{}\"{hint}", output.task),
            );
        }
        let spec = self.module(
            &format!("{at}.decoder.module"),
            &output.decoder.module,
            ModuleKind::Decoder,
            catalog,
        );
        if let (Some(spec), Some(task)) = (spec, task)
            && !spec.tasks.contains(&task)
        {
            let can = spec
                .tasks
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.err(
                ErrorKind::UnsupportedTask,
                format!("{at}.decoder.module"),
                format!("\"{}\" cannot do {task} (it does: {can})", spec.id),
            );
        }
        match (schema.get(&output.name), task) {
            (None, _) => self.missing_column(&format!("{at}.name"), &output.name, schema),
            (Some(ty), Some(task)) => {
                let (fits, needs) = match task {
                    Task::Classification => (*ty == ColumnType::Category, "categories"),
                    Task::MultiLabel => (*ty == ColumnType::MultiLabel, "label sets"),
                    Task::Regression => (*ty == ColumnType::Number, "numbers"),
                    Task::Tagging => (*ty == ColumnType::Tags, "word tags"),
                };
                if !fits {
                    self.err(
                        ErrorKind::WrongColumnType,
                        format!("{at}.name"),
                        format!(
                            "column \"{}\" holds {}, a {task} output needs {needs}",
                            output.name,
                            ty.describe()
                        ),
                    );
                }
            }
            _ => {}
        }
        let params =
            spec.and_then(|s| self.params(&format!("{at}.decoder"), s, &output.decoder.params))?;
        let spec = spec?;
        let head = match spec.id.as_str() {
            "head/linear" => HeadKind::Linear,
            "head/mlp" => HeadKind::Mlp {
                hidden: match params.get("hidden") {
                    Some(ParamValue::Integer(h)) => *h as usize,
                    _ => 256,
                },
            },
            _ => HeadKind::Token,
        };
        let dropout = match params.get("dropout") {
            Some(ParamValue::Number(d)) => *d,
            _ => 0.1,
        };
        Some(CompiledOutput {
            name: output.name.clone(),
            task: task?,
            module: spec.id.clone(),
            head,
            dropout,
        })
    }

    /// Checks a module's parameters against its catalog entry and fills in defaults.
    fn params(
        &mut self,
        at: &str,
        spec: &ModuleSpec,
        given: &BTreeMap<String, serde_json::Value>,
    ) -> Option<BTreeMap<String, ParamValue>> {
        let before = self.errors.len();
        for name in given.keys() {
            if spec.param(name).is_none() {
                let hint = did_you_mean(closest(name, spec.params.iter().map(|p| p.name.as_str())));
                let known = spec
                    .params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                self.err(
                    ErrorKind::UnknownParameter,
                    format!("{at}.{name}"),
                    format!(
                        "\"{}\" has no parameter \"{name}\" (it has: {known}){hint}",
                        spec.id
                    ),
                );
            }
        }
        let mut out = BTreeMap::new();
        for p in &spec.params {
            let field = format!("{at}.{}", p.name);
            let value = given.get(&p.name);
            let v = match (&p.kind, value) {
                (ParamKind::Integer { default, .. }, None) => Some(ParamValue::Integer(*default)),
                (ParamKind::Integer { min, max, .. }, Some(v)) => match v.as_i64() {
                    Some(n) => self
                        .bounded(&field, n as f64, *min as f64, *max as f64)
                        .then_some(ParamValue::Integer(n)),
                    None => self.wrong_type(&field, v, "a whole number"),
                },
                (ParamKind::Number { default, .. }, None) => Some(ParamValue::Number(*default)),
                (ParamKind::Number { min, max, .. }, Some(v)) => match v.as_f64() {
                    Some(n) => self
                        .bounded(&field, n, *min, *max)
                        .then_some(ParamValue::Number(n)),
                    None => self.wrong_type(&field, v, "a number"),
                },
                (ParamKind::Choice { default, .. }, None) => {
                    Some(ParamValue::Text(default.clone()))
                }
                (ParamKind::Choice { options, .. }, Some(v)) => match v.as_str() {
                    Some(s) if options.iter().any(|o| o == s) => {
                        Some(ParamValue::Text(s.to_string()))
                    }
                    Some(s) => {
                        let hint = did_you_mean(closest(s, options.iter().map(String::as_str)));
                        self.err(
                            ErrorKind::InvalidValue,
                            &field,
                            format!("\"{s}\" is not one of {}{hint}", options.join(", ")),
                        );
                        None
                    }
                    None => self.wrong_type(&field, v, "a string"),
                },
                (ParamKind::Boolean { default }, None) => Some(ParamValue::Boolean(*default)),
                (ParamKind::Boolean { .. }, Some(v)) => match v.as_bool() {
                    Some(b) => Some(ParamValue::Boolean(b)),
                    None => self.wrong_type(&field, v, "true or false"),
                },
                (ParamKind::Text { default: Some(d) }, None) => Some(ParamValue::Text(d.clone())),
                (ParamKind::Text { default: None }, None) => {
                    self.err(
                        ErrorKind::InvalidValue,
                        &field,
                        format!("\"{}\" needs \"{}\"", spec.id, p.name),
                    );
                    None
                }
                (ParamKind::Text { .. }, Some(v)) => match v.as_str() {
                    Some(s) if !s.trim().is_empty() => Some(ParamValue::Text(s.to_string())),
                    _ => self.wrong_type(&field, v, "a non-empty string"),
                },
                (ParamKind::Columns {}, None) => Some(ParamValue::List(Vec::new())),
                (ParamKind::Columns {}, Some(v)) => {
                    let names: Option<Vec<String>> = match v {
                        // The portal's form sends one text field: names between commas.
                        serde_json::Value::String(s) => Some(
                            s.split(',')
                                .map(str::trim)
                                .filter(|n| !n.is_empty())
                                .map(String::from)
                                .collect(),
                        ),
                        serde_json::Value::Array(items) => {
                            items.iter().map(|i| i.as_str().map(String::from)).collect()
                        }
                        _ => None,
                    };
                    match names {
                        Some(names) => Some(ParamValue::List(names)),
                        None => self.wrong_type(&field, v, "a list of column names"),
                    }
                }
            };
            if let Some(v) = v {
                out.insert(p.name.clone(), v);
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn wrong_type(
        &mut self,
        field: &str,
        v: &serde_json::Value,
        wanted: &str,
    ) -> Option<ParamValue> {
        self.err(
            ErrorKind::InvalidValue,
            field,
            format!("{v} is not {wanted}"),
        );
        None
    }

    /// True when `min <= v <= max`; records the error otherwise.
    fn bounded(&mut self, field: &str, v: f64, min: f64, max: f64) -> bool {
        if v.is_nan() || v < min {
            self.err(
                ErrorKind::OutOfBounds,
                field,
                format!("{v} is below the minimum {min}"),
            );
            false
        } else if v > max {
            self.err(
                ErrorKind::OutOfBounds,
                field,
                format!("{v} is above the maximum {max}"),
            );
            false
        } else {
            true
        }
    }

    fn adaptation(
        &mut self,
        spec: Option<&AdaptationSpec>,
        encoders: &[Option<&ModuleSpec>],
    ) -> Option<Option<LoraSettings>> {
        let default = AdaptationSpec::default();
        let spec = spec.unwrap_or(&default);
        match spec.method.as_deref() {
            None | Some("lora") => {}
            Some("none") => return Some(None),
            Some(other) => {
                let hint = did_you_mean(closest(other, ["lora", "none"]));
                self.err(
                    ErrorKind::InvalidValue,
                    "adaptation.method",
                    format!("unknown method \"{other}\" (use lora or none){hint}"),
                );
                return None;
            }
        }
        let before = self.errors.len();
        let rank = spec.rank.unwrap_or(8);
        self.bounded("adaptation.rank", rank as f64, 1.0, 256.0);
        let alpha = spec.alpha.unwrap_or(16.0);
        if !(alpha > 0.0 && alpha <= 1024.0) {
            self.err(
                ErrorKind::OutOfBounds,
                "adaptation.alpha",
                format!("{alpha} must be above 0 and at most 1024"),
            );
        }
        let dropout = spec.dropout.unwrap_or(0.1);
        self.bounded("adaptation.dropout", dropout, 0.0, 0.9);
        let targets = match &spec.targets {
            Some(targets) => {
                if targets.is_empty() {
                    self.err(
                        ErrorKind::InvalidValue,
                        "adaptation.targets",
                        "name at least one layer, or leave targets out",
                    );
                }
                let mut seen = HashSet::new();
                for (i, t) in targets.iter().enumerate() {
                    if !seen.insert(t) {
                        self.err(
                            ErrorKind::Duplicate,
                            format!("adaptation.targets[{i}]"),
                            format!("\"{t}\" is listed twice"),
                        );
                    }
                    for enc in encoders.iter().flatten() {
                        if !enc.lora_targets.contains(t) {
                            let hint = did_you_mean(closest(
                                t,
                                enc.lora_targets.iter().map(String::as_str),
                            ));
                            self.err(
                                ErrorKind::UnknownLoraTarget,
                                format!("adaptation.targets[{i}]"),
                                format!(
                                    "encoder \"{}\" has no layer \"{t}\" (it has: {}){hint}",
                                    enc.id,
                                    enc.lora_targets.join(", ")
                                ),
                            );
                        }
                    }
                }
                targets.clone()
            }
            None => encoders
                .iter()
                .flatten()
                .next()
                .map(|e| e.default_lora_targets.clone())
                .unwrap_or_default(),
        };
        (self.errors.len() == before).then_some(Some(LoraSettings {
            rank: rank.max(1) as usize,
            alpha,
            dropout,
            targets,
        }))
    }

    fn training(
        &mut self,
        spec: Option<&TrainingSpec>,
        tasks: &[Task],
    ) -> Option<TrainingSettings> {
        let default = TrainingSpec::default();
        let spec = spec.unwrap_or(&default);
        let before = self.errors.len();
        let mut s = TrainingSettings::default();
        if let Some(e) = spec.epochs
            && self.bounded("training.epochs", e as f64, 0.0, 200.0)
        {
            s.epochs = Some(e as usize);
        }
        if let Some(b) = spec.batch_size
            && self.bounded("training.batch_size", b as f64, 1.0, 256.0)
        {
            s.batch_size = b as usize;
        }
        for (field, given, slot) in [
            (
                "training.learning_rate",
                spec.learning_rate,
                &mut s.learning_rate,
            ),
            (
                "training.head_learning_rate",
                spec.head_learning_rate,
                &mut s.head_learning_rate,
            ),
        ] {
            if let Some(lr) = given {
                if lr > 0.0 && lr <= 1.0 {
                    *slot = lr;
                } else {
                    self.err(
                        ErrorKind::OutOfBounds,
                        field,
                        format!("{lr} must be above 0 and at most 1"),
                    );
                }
            }
        }
        if let Some(wd) = spec.weight_decay
            && self.bounded("training.weight_decay", wd, 0.0, 1.0)
        {
            s.weight_decay = wd;
        }
        if let Some(w) = spec.warmup_ratio
            && self.bounded("training.warmup_ratio", w, 0.0, 0.5)
        {
            s.warmup_ratio = w;
        }
        if let Some(name) = &spec.schedule {
            match ScheduleKind::parse(name) {
                Some(k) => s.schedule = k,
                None => {
                    let hint = did_you_mean(closest(name, ["linear", "cosine", "constant"]));
                    self.err(
                        ErrorKind::InvalidValue,
                        "training.schedule",
                        format!(
                            "unknown schedule \"{name}\" (use linear, cosine or constant){hint}"
                        ),
                    );
                }
            }
        }
        if let Some(n) = spec.max_grad_norm {
            if n > 0.0 && n <= 1e6 {
                s.max_grad_norm = n;
            } else {
                self.err(
                    ErrorKind::OutOfBounds,
                    "training.max_grad_norm",
                    format!("{n} must be above 0 and at most 1000000"),
                );
            }
        }
        if let Some(seed) = spec.seed {
            s.seed = seed;
        }
        if let Some(v) = spec.validation_split {
            if v > 0.0 && v <= 0.5 {
                s.validation_split = v;
            } else {
                self.err(
                    ErrorKind::OutOfBounds,
                    "training.validation_split",
                    format!("{v} must be above 0 and at most 0.5"),
                );
            }
        }
        match spec.class_weights.as_deref() {
            None => {}
            Some("balanced") => s.class_weights = ClassWeighting::Balanced,
            Some("none") => s.class_weights = ClassWeighting::None,
            Some(other) => {
                let hint = did_you_mean(closest(other, ["balanced", "none"]));
                self.err(
                    ErrorKind::InvalidValue,
                    "training.class_weights",
                    format!("unknown class weighting \"{other}\" (use balanced or none){hint}"),
                );
            }
        }
        let es = spec.early_stopping.clone().unwrap_or_default();
        s.early_stopping.metric = match es.metric {
            Some(m) => {
                for task in tasks {
                    if !metrics::names_for(*task).contains(&m.as_str()) {
                        let names = metrics::names_for(*task);
                        let hint = did_you_mean(closest(&m, names.iter().copied()));
                        self.err(
                            ErrorKind::UnknownMetric,
                            "training.early_stopping.metric",
                            format!(
                                "\"{m}\" is not a metric of {task} (use one of: {}){hint}",
                                names.join(", ")
                            ),
                        );
                    }
                }
                m
            }
            None => default_metric(tasks).to_string(),
        };
        if let Some(p) = es.patience
            && self.bounded("training.early_stopping.patience", p as f64, 0.0, 100.0)
        {
            s.early_stopping.patience = p as usize;
        }
        (self.errors.len() == before).then_some(s)
    }
}

fn int_setting(field: &str, description: &str, min: i64, max: i64, default: i64) -> SettingSpec {
    SettingSpec {
        field: field.into(),
        description: description.into(),
        kind: ParamKind::Integer { min, max, default },
        exclusive_min: false,
        auto: false,
    }
}

fn num_setting(field: &str, description: &str, min: f64, max: f64, default: f64) -> SettingSpec {
    SettingSpec {
        field: field.into(),
        description: description.into(),
        kind: ParamKind::Number { min, max, default },
        exclusive_min: false,
        auto: false,
    }
}

fn choice_setting(field: &str, description: &str, options: &[&str], default: &str) -> SettingSpec {
    SettingSpec {
        field: field.into(),
        description: description.into(),
        kind: ParamKind::Choice {
            options: options.iter().map(|o| o.to_string()).collect(),
            default: default.into(),
        },
        exclusive_min: false,
        auto: false,
    }
}

/// The blueprint-level settings with the defaults and bounds [`compile`] applies.
pub fn settings() -> Vec<SettingSpec> {
    let d = TrainingSettings::default();
    let exclusive = |mut s: SettingSpec| {
        s.exclusive_min = true;
        s
    };
    vec![
        choice_setting(
            "adaptation.method",
            "LoRA adapters on the encoder, or train the heads only.",
            &["lora", "none"],
            "lora",
        ),
        int_setting(
            "adaptation.rank",
            "Rank of each LoRA adapter: more learns more, and overfits sooner.",
            1,
            256,
            8,
        ),
        exclusive(num_setting(
            "adaptation.alpha",
            "LoRA scale numerator (scale = alpha / rank).",
            0.0,
            1024.0,
            16.0,
        )),
        num_setting(
            "adaptation.dropout",
            "Dropout on the adapters' input while training.",
            0.0,
            0.9,
            0.1,
        ),
        SettingSpec {
            auto: true,
            ..int_setting(
                "training.epochs",
                "Passes over the training rows; unset: about 500 steps, 4 to 30 epochs; 0: no \
                 training, the heads keep their initial values (evaluation only).",
                0,
                200,
                10,
            )
        },
        int_setting(
            "training.batch_size",
            "Rows per optimizer step.",
            1,
            256,
            d.batch_size as i64,
        ),
        exclusive(num_setting(
            "training.learning_rate",
            "Learning rate of the adapters.",
            0.0,
            1.0,
            d.learning_rate,
        )),
        exclusive(num_setting(
            "training.head_learning_rate",
            "Learning rate of the heads.",
            0.0,
            1.0,
            d.head_learning_rate,
        )),
        num_setting(
            "training.weight_decay",
            "Decoupled weight decay (AdamW), not on biases.",
            0.0,
            1.0,
            d.weight_decay,
        ),
        num_setting(
            "training.warmup_ratio",
            "Share of steps over which the rate warms up from 0.",
            0.0,
            0.5,
            d.warmup_ratio,
        ),
        choice_setting(
            "training.schedule",
            "How the rate decays after warm-up.",
            &["linear", "cosine", "constant"],
            "linear",
        ),
        exclusive(num_setting(
            "training.max_grad_norm",
            "Gradients are clipped to this global norm.",
            0.0,
            1e6,
            d.max_grad_norm,
        )),
        int_setting(
            "training.seed",
            "The same seed gives the same run.",
            0,
            i64::MAX,
            d.seed as i64,
        ),
        exclusive(num_setting(
            "training.validation_split",
            "Share of rows held out for validation (and, without a test split, for the report).",
            0.0,
            0.5,
            d.validation_split,
        )),
        choice_setting(
            "training.class_weights",
            "Weigh rare classes up in the loss.",
            &["balanced", "none"],
            "balanced",
        ),
        SettingSpec {
            auto: true,
            ..choice_setting(
                "training.early_stopping.metric",
                "Validation metric that picks the best epoch; unset: the task's usual one.",
                &[
                    "accuracy",
                    "macro_f1",
                    "macro_precision",
                    "macro_recall",
                    "micro_f1",
                    "subset_accuracy",
                    "mae",
                    "rmse",
                    "r2",
                    "entity_f1",
                    "entity_precision",
                    "entity_recall",
                    "token_accuracy",
                    "loss",
                ],
                "macro_f1",
            )
        },
        int_setting(
            "training.early_stopping.patience",
            "Epochs without improvement before stopping, once a third of the epochs has run; 0 never stops early.",
            0,
            100,
            3,
        ),
    ]
}

/// The metric early stopping watches when the blueprint names none: the task's usual
/// headline metric, or the validation loss when outputs of different tasks share a model.
pub fn default_metric(tasks: &[Task]) -> &'static str {
    let first = match tasks.first() {
        Some(t) => *t,
        None => return "loss",
    };
    if tasks.iter().any(|t| *t != first) {
        return "loss";
    }
    metrics::headline(first)
}

fn article(kind: ModuleKind) -> &'static str {
    match kind {
        ModuleKind::Encoder => "an encoder",
        ModuleKind::Fusion => "a fusion",
        ModuleKind::Decoder => "a decoder",
    }
}
