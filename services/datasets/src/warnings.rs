//! Warnings: things that do not stop a dataset but that a domain expert should look at.

use serde::{Deserialize, Serialize};

use crate::profile::ValueCount;

/// Classes with fewer examples than this get a warning.
pub const MIN_EXAMPLES_PER_CLASS: u64 = 5;

/// A warning: its kind with the data to show, and a ready-made sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    #[serde(flatten)]
    pub kind: WarningKind,
    pub message: String,
}

/// Two rows with the same input but different labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelConflict {
    pub first_line: u64,
    pub first_label: String,
    pub line: u64,
    pub label: String,
}

/// A row that repeats an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateRow {
    pub line: u64,
    pub first_line: u64,
}

/// A value with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineValue {
    pub line: u64,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WarningKind {
    /// Classes with fewer than [`MIN_EXAMPLES_PER_CLASS`] examples (at most 10 listed).
    RareClasses {
        column: String,
        classes: Vec<ValueCount>,
        total: u64,
    },
    /// Labels that differ only by upper/lower case or spaces.
    SimilarLabels {
        column: String,
        groups: Vec<Vec<String>>,
    },
    /// The same input (text or file) appears with different labels.
    ConflictingLabels {
        input_columns: Vec<String>,
        label_column: String,
        count: u64,
        examples: Vec<LabelConflict>,
    },
    /// A label column holds a single value: there is nothing to learn.
    SingleClass {
        column: String,
        value: String,
    },
    DuplicateRows {
        count: u64,
        examples: Vec<DuplicateRow>,
    },
    EmptyRows {
        count: u64,
        first_line: u64,
    },
    /// Header cells that were empty got these names (`column_1`, …).
    UnnamedColumns {
        columns: Vec<String>,
    },
    /// A column that is all empty.
    EmptyColumn {
        column: String,
    },
    /// Nearly all values are numbers but a few are not, so the column was taken as text.
    MostlyNumbers {
        column: String,
        not_numbers: u64,
        examples: Vec<LineValue>,
    },
    /// Whole numbers with few distinct values: maybe classes written as numbers.
    NumbersLookLikeClasses {
        column: String,
        values: Vec<String>,
    },
    /// Files in the archive that no manifest row names.
    UnreferencedFiles {
        count: u64,
        examples: Vec<String>,
    },
    /// A `file` column whose files are of several kinds.
    MixedModalities {
        column: String,
    },
    /// Duplicate and conflict detection stopped after this many rows.
    TrackingLimited {
        rows: u64,
    },
}

impl Warning {
    pub(crate) fn new(kind: WarningKind) -> Warning {
        let message = message(&kind);
        Warning { kind, message }
    }
}

fn quoted(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn message(kind: &WarningKind) -> String {
    match kind {
        WarningKind::RareClasses {
            column,
            classes,
            total,
        } => {
            let list = classes
                .iter()
                .map(|c| format!("\"{}\" ({})", c.value, c.count))
                .collect::<Vec<_>>()
                .join(", ");
            let more = if *total > classes.len() as u64 {
                format!(" and {} more", total - classes.len() as u64)
            } else {
                String::new()
            };
            format!(
                "column \"{column}\": {total} class(es) have fewer than {MIN_EXAMPLES_PER_CLASS} \
                 examples: {list}{more}; add examples or merge these classes, or the model \
                 will hardly learn them"
            )
        }
        WarningKind::SimilarLabels { column, groups } => {
            let list = groups
                .iter()
                .map(|g| quoted(g))
                .collect::<Vec<_>>()
                .join("; ");
            format!(
                "column \"{column}\": labels differ only by upper/lower case or spaces ({list}); \
                 they count as different classes, so write each label one way"
            )
        }
        WarningKind::ConflictingLabels {
            input_columns,
            label_column,
            count,
            examples,
        } => {
            let example = examples
                .first()
                .map(|e| {
                    format!(
                        " (line {} says \"{}\", line {} says \"{}\")",
                        e.first_line, e.first_label, e.line, e.label
                    )
                })
                .unwrap_or_default();
            format!(
                "{count} row(s) have the same {} as an earlier row but a different \
                 \"{label_column}\"{example}; decide which label is right",
                input_columns.join(" + ")
            )
        }
        WarningKind::SingleClass { column, value } => format!(
            "column \"{column}\" has the single value \"{value}\"; a model needs at least two \
             classes to learn from"
        ),
        WarningKind::DuplicateRows { count, examples } => {
            let example = examples
                .first()
                .map(|e| format!(" (line {} repeats line {})", e.line, e.first_line))
                .unwrap_or_default();
            format!(
                "{count} row(s) repeat an earlier row{example}; remove the copies unless they are intended"
            )
        }
        WarningKind::EmptyRows { count, first_line } => {
            format!("{count} empty row(s) were skipped (the first on line {first_line})")
        }
        WarningKind::UnnamedColumns { columns } => format!(
            "the header gives no name to {}; they were named {} (often a row number written \
             by a spreadsheet or pandas: remove it if it is not data)",
            if columns.len() == 1 {
                "one column"
            } else {
                "some columns"
            },
            quoted(columns)
        ),
        WarningKind::EmptyColumn { column } => {
            format!("column \"{column}\" is empty in every row")
        }
        WarningKind::MostlyNumbers {
            column,
            not_numbers,
            examples,
        } => {
            let list = examples
                .iter()
                .map(|e| format!("line {}: \"{}\"", e.line, e.value))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "column \"{column}\" is nearly all numbers but {not_numbers} value(s) are not \
                 ({list}); it was read as text: fix those values, or set its type to number \
                 to list them all"
            )
        }
        WarningKind::NumbersLookLikeClasses { column, values } => format!(
            "column \"{column}\" holds only the whole numbers {}; if these are classes rather \
             than amounts, set its type to category",
            values.join(", ")
        ),
        WarningKind::UnreferencedFiles { count, examples } => format!(
            "{count} file(s) in the archive are not named in the manifest (e.g. {}); they will \
             not be used",
            quoted(examples)
        ),
        WarningKind::MixedModalities { column } => format!(
            "column \"{column}\" points to files of different kinds (e.g. images and audio); \
             one column should hold one kind"
        ),
        WarningKind::TrackingLimited { rows } => format!(
            "duplicates and conflicting labels were only looked for in the first {rows} rows"
        ),
    }
}
