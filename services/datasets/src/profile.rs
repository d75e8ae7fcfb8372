//! Bounded per-column statistics, type inference, and the serializable profile.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::TextEncoding;
use crate::schema::{ColumnType, Modality};

/// Distinct values remembered per column; past this a column is not a category.
pub(crate) const MAX_DISTINCT: usize = 1000;
/// Values longer than this (in bytes) are not remembered as distinct values.
pub(crate) const MAX_VALUE_BYTES: usize = 200;
/// Values shown in a column's distribution.
pub(crate) const TOP_K: usize = 20;
/// Text-length histogram bins: `[0,16)`, `[16,32)`, … `[2048,∞)` characters.
pub(crate) const LENGTH_BIN_EDGES: [u64; 9] = [0, 16, 32, 64, 128, 256, 512, 1024, 2048];

/// The format of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    Csv,
    Tsv,
    Jsonl,
}

impl TableFormat {
    /// `"csv"`, `"tsv"` or `"jsonl"`, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TableFormat::Csv => "csv",
            TableFormat::Tsv => "tsv",
            TableFormat::Jsonl => "jsonl",
        }
    }

    /// The format a file name's extension says (`.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`).
    pub fn from_file_name(name: &str) -> Option<TableFormat> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" | "txt" => Some(TableFormat::Csv),
            "tsv" | "tab" => Some(TableFormat::Tsv),
            "jsonl" | "ndjson" => Some(TableFormat::Jsonl),
            _ => None,
        }
    }
}

/// One value and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueCount {
    pub value: String,
    pub count: u64,
}

/// One bin of a text-length histogram: lengths in `[min, max)` characters (`max` absent
/// for the last, open bin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthBin {
    pub min: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    pub count: u64,
}

/// Lengths of the values of a text column, in characters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub histogram: Vec<LengthBin>,
}

/// Range of a number column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumberStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// Where a column's type came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeSource {
    Inferred,
    Schema,
}

/// Everything the profile says about one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    pub type_source: TypeSource,
    /// For `file` columns: the kind of file most of its values point to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<Modality>,
    /// Rows with a value in this column.
    pub present: u64,
    /// Rows where this column is empty (or, in JSONL, absent or `null`).
    pub missing: u64,
    /// Distinct values (or labels, for `multi_label`); `None` when there are more than
    /// can be counted exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<u64>,
    /// For `category` and `multi_label` columns: the most common values, most common first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_values: Vec<ValueCount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<LengthStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<NumberStats>,
    /// For `file` columns of an archive: what their files decoded to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<crate::media::MediaProfile>,
}

/// One of the first rows, as text, for the portal to show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    pub line: u64,
    /// One value per column (in `Profile::columns` order); `None` when empty.
    pub values: Vec<Option<String>>,
}

/// What an archive held besides its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveProfile {
    /// Path of the manifest inside the archive.
    pub manifest: String,
    /// Files in the archive (not counting folders and the manifest).
    pub files: u64,
    /// Bytes of all entries once unpacked, as measured by unpacking them.
    pub unpacked_bytes: u64,
    pub files_by_modality: Vec<(Modality, u64)>,
    /// Files that no manifest row names.
    pub unreferenced_files: u64,
}

/// Counts and statistics of a dataset; stored by the portal as JSON and rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub format: TableFormat,
    pub encoding: TextEncoding,
    /// The CSV/TSV delimiter used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// Rows of data read (not counting the header and empty rows).
    pub rows: u64,
    /// Rows without any error.
    pub valid_rows: u64,
    pub rows_with_errors: u64,
    /// Blank rows (or rows of empty values), skipped.
    pub empty_rows: u64,
    /// Rows identical (after trimming spaces) to an earlier row.
    pub duplicate_rows: u64,
    pub columns: Vec<ColumnProfile>,
    pub sample: Vec<SampleRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveProfile>,
}

/// Bounded statistics of one column, updated row by row.
#[derive(Debug, Default)]
pub(crate) struct ColumnStats {
    pub present: u64,
    pub numeric: u64,
    pub integers: u64,
    pub num_min: f64,
    pub num_max: f64,
    pub num_sum: f64,
    /// The first values that are not numbers, with their lines.
    pub non_numeric: Vec<(u64, String)>,
    /// JSON arrays seen.
    pub lists: u64,
    pub with_pipe: u64,
    pub with_semicolon: u64,
    /// Distinct values and counts, at most `MAX_DISTINCT`, each at most `MAX_VALUE_BYTES`.
    pub values: HashMap<String, u64>,
    /// More distinct (or longer) values were seen than `values` holds.
    pub overflow: bool,
    pub len_hist: [u64; LENGTH_BIN_EDGES.len()],
    pub len_min: u64,
    pub len_max: u64,
    pub len_sum: u64,
}

/// Parses a value as a finite number (`"3.5"`, `"-2"`, `"1e3"`; not `"NaN"`).
pub(crate) fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let first = t.bytes().next()?;
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl ColumnStats {
    /// Records one present value. `list` is set for JSON arrays (then `value` is the
    /// items joined by `|`).
    pub fn observe(&mut self, line: u64, value: &str, list: bool) {
        self.present += 1;
        if list {
            self.lists += 1;
        } else if let Some(n) = parse_number(value) {
            if self.numeric == 0 {
                self.num_min = n;
                self.num_max = n;
            } else {
                self.num_min = self.num_min.min(n);
                self.num_max = self.num_max.max(n);
            }
            self.numeric += 1;
            self.num_sum += n;
            if n.fract() == 0.0 {
                self.integers += 1;
            }
        } else if self.non_numeric.len() < 3 {
            self.non_numeric.push((line, truncate(value, 60)));
        }
        if !list {
            if value.contains('|') {
                self.with_pipe += 1;
            }
            if value.contains(';') {
                self.with_semicolon += 1;
            }
        }
        let chars = value.chars().count() as u64;
        let bin = LENGTH_BIN_EDGES
            .iter()
            .rposition(|&edge| chars >= edge)
            .unwrap_or(0);
        self.len_hist[bin] += 1;
        if self.present == 1 {
            self.len_min = chars;
            self.len_max = chars;
        } else {
            self.len_min = self.len_min.min(chars);
            self.len_max = self.len_max.max(chars);
        }
        self.len_sum += chars;
        if self.overflow {
            // Past the cap the counts are no longer used (not a category): skip the lookup.
        } else if value.len() > MAX_VALUE_BYTES {
            self.overflow = true;
        } else if let Some(count) = self.values.get_mut(value) {
            *count += 1;
        } else if self.values.len() < MAX_DISTINCT {
            self.values.insert(value.to_owned(), 1);
        } else {
            self.overflow = true;
        }
    }

    /// The separator that makes this column a list, if its values use one.
    pub fn list_separator(&self, delimiter: Option<u8>) -> Option<char> {
        if self.lists > 0 {
            return Some('|');
        }
        if self.with_pipe > 0 && delimiter != Some(b'|') {
            Some('|')
        } else if self.with_semicolon > 0 && delimiter != Some(b';') {
            Some(';')
        } else {
            None
        }
    }

    /// Label counts of a list column (values split by `sep`), or `None` if not all
    /// values were remembered.
    pub fn item_counts(&self, sep: char) -> Option<HashMap<String, u64>> {
        if self.overflow {
            return None;
        }
        let mut items: HashMap<String, u64> = HashMap::new();
        for (value, count) in &self.values {
            for item in value.split(sep).map(str::trim).filter(|s| !s.is_empty()) {
                *items.entry(item.to_owned()).or_default() += count;
            }
        }
        Some(items)
    }

    /// The type these values most likely are. `file` is decided elsewhere.
    pub fn infer(&self, delimiter: Option<u8>) -> ColumnType {
        if self.present == 0 {
            return ColumnType::Text;
        }
        if self.lists * 2 >= self.present {
            return ColumnType::MultiLabel;
        }
        if self.numeric == self.present {
            return ColumnType::Number;
        }
        if let Some(sep) = self.list_separator(delimiter)
            && let Some(items) = self.item_counts(sep)
        {
            let total: u64 = items.values().sum();
            let longest = items.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            if !items.is_empty() && longest <= 64 && (items.len() as u64) * 2 <= total.max(2) {
                return ColumnType::MultiLabel;
            }
        }
        if self.is_category_like() {
            return ColumnType::Category;
        }
        ColumnType::Text
    }

    /// Few, short distinct values relative to the number of rows: at most half as many
    /// values as rows, or (for short values, as labels are) most values repeated.
    fn is_category_like(&self) -> bool {
        if self.overflow || self.len_max > 100 {
            return false;
        }
        let distinct = self.values.len() as u64;
        distinct * 2 <= self.present || (self.len_max <= 32 && distinct * 5 <= self.present * 4)
    }

    pub fn length_stats(&self) -> Option<LengthStats> {
        if self.present == 0 {
            return None;
        }
        let histogram = LENGTH_BIN_EDGES
            .iter()
            .enumerate()
            .map(|(i, &min)| LengthBin {
                min,
                max: LENGTH_BIN_EDGES.get(i + 1).copied(),
                count: self.len_hist[i],
            })
            .collect();
        Some(LengthStats {
            min: self.len_min,
            max: self.len_max,
            mean: self.len_sum as f64 / self.present as f64,
            histogram,
        })
    }

    pub fn number_stats(&self) -> Option<NumberStats> {
        (self.numeric > 0).then(|| NumberStats {
            min: self.num_min,
            max: self.num_max,
            mean: self.num_sum / self.numeric as f64,
        })
    }
}

/// The `k` most common values, most common first (ties by value, for stable output).
pub(crate) fn top_k(counts: &HashMap<String, u64>, k: usize) -> Vec<ValueCount> {
    let mut all: Vec<ValueCount> = counts
        .iter()
        .map(|(value, &count)| ValueCount {
            value: value.clone(),
            count,
        })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    all.truncate(k);
    all
}

/// At most `max` characters of `s`, with `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(values: &[&str]) -> ColumnStats {
        let mut s = ColumnStats::default();
        for (i, v) in values.iter().enumerate() {
            s.observe(i as u64 + 2, v, false);
        }
        s
    }

    #[test]
    fn inference_of_each_type() {
        assert_eq!(
            stats(&["1", "2.5", "-3", "1e3"]).infer(Some(b',')),
            ColumnType::Number
        );
        assert_eq!(
            stats(&["pos", "neg", "pos", "neg", "pos", "neg"]).infer(Some(b',')),
            ColumnType::Category
        );
        assert_eq!(
            stats(&[
                "the contract ends",
                "a clause on fees",
                "the parties agree",
                "x y"
            ])
            .infer(Some(b',')),
            ColumnType::Text
        );
        assert_eq!(
            stats(&["nda|fees", "fees", "nda", "term|nda", "fees|term", "nda"]).infer(Some(b',')),
            ColumnType::MultiLabel
        );
        assert_eq!(
            stats(&["a;b", "b", "a", "a;b"]).infer(Some(b',')),
            ColumnType::MultiLabel
        );
        // With `;` as the delimiter, `;` cannot be the list separator.
        assert_eq!(
            stats(&["a;b", "b", "a", "a;b", "b", "a"]).infer(Some(b';')),
            ColumnType::Category
        );
        // A small dataset: 20 rows, 12 short labels, most of them repeated.
        let labels: Vec<String> = (0..20).map(|i| format!("class {}", i % 12)).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(stats(&labels).infer(Some(b',')), ColumnType::Category);
        let names: Vec<String> = (0..20).map(|i| format!("name {i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(stats(&names).infer(Some(b',')), ColumnType::Text);
        // A number column with one word in it is text (and a warning elsewhere).
        assert_eq!(
            stats(&["1", "2", "ten", "4"]).infer(Some(b',')),
            ColumnType::Text
        );
        let mut json_lists = ColumnStats::default();
        json_lists.observe(1, "a|b", true);
        json_lists.observe(2, "b", true);
        assert_eq!(json_lists.infer(None), ColumnType::MultiLabel);
    }

    #[test]
    fn distinct_values_stay_bounded() {
        let mut s = ColumnStats::default();
        for i in 0..10_000 {
            s.observe(i, &format!("value {i}"), false);
        }
        s.observe(0, &"x".repeat(1000), false);
        assert_eq!(s.values.len(), MAX_DISTINCT);
        assert!(s.overflow);
        assert_eq!(s.infer(None), ColumnType::Text);
    }

    #[test]
    fn lengths_fall_in_fixed_bins() {
        let s = stats(&["", "abc", &"x".repeat(20), &"字".repeat(3000)]);
        let l = s.length_stats().unwrap();
        assert_eq!(l.histogram[0].count, 2);
        assert_eq!(l.histogram[1].count, 1);
        assert_eq!(l.histogram[8].count, 1);
        assert_eq!(l.histogram[8].max, None);
        assert_eq!(l.max, 3000);
    }

    #[test]
    fn number_parsing_rejects_words() {
        assert_eq!(parse_number(" 7 "), Some(7.0));
        assert_eq!(parse_number("ten"), None);
        assert_eq!(parse_number("NaN"), None);
        assert_eq!(parse_number("inf"), None);
        assert_eq!(parse_number("1,5"), None);
    }
}
