//! Column types and the schema a user can give to override what was inferred.

use serde::{Deserialize, Serialize};

/// What a column holds, in the words the portal shows to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Free text (the input of a text encoder).
    Text,
    /// One of a few distinct values: a class label.
    Category,
    /// A number (a rating, a measurement, a regression target).
    Number,
    /// A list of labels: a JSON array in JSONL, `a|b|c` or `a;b` in CSV.
    MultiLabel,
    /// A path to a file inside the uploaded ZIP archive.
    File,
}

impl ColumnType {
    /// The name used in messages and in JSON (`"multi_label"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Category => "category",
            ColumnType::Number => "number",
            ColumnType::MultiLabel => "multi_label",
            ColumnType::File => "file",
        }
    }

    /// Whether the column is a label that a model learns to predict as classes.
    pub fn is_label(self) -> bool {
        matches!(self, ColumnType::Category | ColumnType::MultiLabel)
    }
}

/// The kind of file a `file` column points to, decided by the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Image,
    Audio,
    Video,
    Sensor,
    Pointcloud,
    Other,
}

impl Modality {
    /// The modality of a file, from its extension (case-insensitive).
    ///
    /// ```
    /// use tailor_datasets::Modality;
    /// assert_eq!(Modality::from_path("scans/001.PNG"), Modality::Image);
    /// assert_eq!(Modality::from_path("eeg/night.edf"), Modality::Sensor);
    /// assert_eq!(Modality::from_path("vibration/7.csv"), Modality::Sensor);
    /// assert_eq!(Modality::from_path("notes.txt"), Modality::Other);
    /// ```
    pub fn from_path(path: &str) -> Modality {
        let name = path.rsplit('/').next().unwrap_or(path);
        let Some((_, ext)) = name.rsplit_once('.') else {
            return Modality::Other;
        };
        match ext.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" | "png" | "gif" | "bmp" | "tif" | "tiff" | "webp" | "dcm" | "heic" => {
                Modality::Image
            }
            "wav" | "mp3" | "flac" | "ogg" | "m4a" | "aac" | "opus" => Modality::Audio,
            // A clip is a video file or an archive of its frames.
            "mp4" | "mov" | "avi" | "mkv" | "webm" | "m4v" | "zip" | "tar" => Modality::Video,
            // A recording per file: a table of channels (CSV/TSV with a header) or an array.
            "csv" | "tsv" | "edf" | "bdf" | "npy" | "npz" | "h5" | "hdf5" | "mat" => {
                Modality::Sensor
            }
            "ply" | "pcd" | "las" | "laz" | "xyz" => Modality::Pointcloud,
            _ => Modality::Other,
        }
    }
}

/// The type a user chose for one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    /// The column name as it appears in the header (CSV) or as the key (JSONL).
    pub name: String,
    /// The type every value of the column must have.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether an empty value is an error.
    #[serde(default)]
    pub required: bool,
}

/// Column types chosen by the user. Columns of the dataset that the schema does not name
/// keep their inferred type; a schema column missing from the dataset is a fatal error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub columns: Vec<ColumnSchema>,
}

impl Schema {
    /// The schema entry for a column, if the user named it.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }
}
