//! `tabular/mlp`: several number and category columns of a dataset as one input, encoded by
//! a small MLP trained from scratch.
//!
//! # The contract with the blueprint and the dataset
//!
//! A tabular input names its dataset columns in the encoder's `columns` parameter; the
//! input's own `name` is then only a label (`"vitals"`). Without `columns`, the input reads
//! the one column its `name` names. The compiler checks that every listed column exists and
//! holds numbers or categories ([`columns`] gives the list for a compiled input).
//!
//! Each row's value is [`InputValue::Cells`](crate::train::InputValue::Cells): one [`Cell`]
//! per listed column, in the listed order — [`Cell::Number`] for a number column,
//! [`Cell::Category`] for a category column, [`Cell::Missing`] where the row has no value
//! (an empty cell). [`cell`] turns a table's text cell into one. A row whose whole input is
//! absent is `InputValue::Missing`: the encoder marks it absent and fusion masks it.
//!
//! # What is learned on the dataset
//!
//! Before the first step, [`TabularEncoder::fit`](crate::encoder::Encoder::fit) sees the
//! training rows (never validation or test rows) and fits, per column:
//! - the mean and standard deviation of its numbers (numbers are standardized and clipped
//!   to ±10);
//! - a vocabulary of its categories: the `max_categories` most frequent that occur at least
//!   twice. Every other category — rare in training, or never seen — shares the "unknown"
//!   embedding, which so learns from the rare ones what an unseen category should mean.
//!
//! A missing cell is never a silent zero: each column has a missing indicator feature, so
//! the MLP can tell "0" from "not measured".
//!
//! The features of a row are, per column, `[standardized number, missing indicator,
//! category embedding (8)]`; an MLP (Linear, GELU, Linear, layer norm) turns them into a
//! 64-wide vector. The fitted statistics are stored with the trained weights, as
//! [`trained_vars`](crate::encoder::Encoder::trained_vars) named `stats.mean`, `stats.std`
//! and `stats.vocab` (vocabulary entries as 48-bit FNV-1a hashes of the category text, two
//! 24-bit halves per entry, each exact in f32; −1 marks an empty slot), beside the trained
//! `embeddings`, `mlp.0.*`, `mlp.1.*` and `norm.*`. They receive no gradient, so the
//! optimizer leaves them alone, and a package that saves and sets back every trained var by
//! name restores the whole encoder.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::blueprint::{CompiledInput, ParamValue};
use crate::catalog::{Modality, ModuleKind, ModuleSpec, ParamKind, ParamSpec, WeightSource};
use crate::encoder::{Cell, DenseBatch, Encoded, Encoder, Prepared, RawColumn};
use crate::layers::{Dense, Init, Norm, set_values};
use crate::ops;

/// Width of the pooled vector.
pub const WIDTH: usize = 64;
/// Width of each category embedding.
const EMBEDDING: usize = 8;
/// Standardized numbers are clipped to this magnitude, so one outlier cannot swamp a batch.
const CLIP: f32 = 10.0;
/// A category is kept in the vocabulary when it occurs at least this often in training.
const MIN_COUNT: usize = 2;

/// The dataset columns a compiled tabular input reads: its `columns` parameter, or its own
/// name when that is empty.
pub fn columns(input: &CompiledInput) -> Vec<String> {
    match input.params.get("columns") {
        Some(ParamValue::List(cols)) if !cols.is_empty() => cols.clone(),
        _ => vec![input.name.clone()],
    }
}

/// The catalog entry of `tabular/mlp`.
pub fn spec() -> ModuleSpec {
    ModuleSpec {
        id: "tabular/mlp".into(),
        kind: ModuleKind::Encoder,
        title: "Table columns (MLP trained on your data)".into(),
        description: "Number and category columns: numbers standardized, categories embedded, \
                      missing cells flagged; a small MLP trained from scratch."
            .into(),
        modality: Some(Modality::Tabular),
        output_width: Some(WIDTH),
        tasks: vec![],
        lora_targets: vec![],
        default_lora_targets: vec![],
        params: vec![
            ParamSpec {
                name: "columns".into(),
                description: "The dataset columns this input reads (numbers or categories); \
                              empty: the column named by the input."
                    .into(),
                kind: ParamKind::Columns {},
            },
            ParamSpec {
                name: "max_categories".into(),
                description: "Per column, at most this many categories get their own \
                              embedding; the rest share an 'unknown' one."
                    .into(),
                kind: ParamKind::Integer {
                    min: 1,
                    max: 1024,
                    default: 32,
                },
            },
            ParamSpec {
                name: "hidden".into(),
                description: "Width of the MLP's hidden layer.".into(),
                kind: ParamKind::Integer {
                    min: 8,
                    max: 1024,
                    default: 128,
                },
            },
        ],
        weights: WeightSource::None,
    }
}

/// A table's text cell as a [`Cell`]: empty (or `NA`, `NaN`, `null`) is missing; in a
/// number column anything else must parse as a finite number.
pub fn cell(text: &str, number_column: bool) -> std::result::Result<Cell, String> {
    let t = text.trim();
    if t.is_empty() || ["na", "nan", "null", "none", "?"].contains(&t.to_ascii_lowercase().as_str())
    {
        return Ok(Cell::Missing);
    }
    if number_column {
        match t.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Cell::Number(v)),
            _ => Err(format!("{t:?} is not a number")),
        }
    } else {
        Ok(Cell::Category(t.to_string()))
    }
}

/// 48 bits of FNV-1a 64 of `s`, as two 24-bit halves (each exact in f32).
fn hash_halves(s: &str) -> [f32; 2] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    [((h >> 24) & 0xff_ffff) as f32, (h & 0xff_ffff) as f32]
}

pub struct TabularEncoder {
    columns: Vec<String>,
    max_categories: usize,
    mean: Var,
    std: Var,
    vocab: Var,
    embeddings: Var,
    hidden: Dense,
    out: Dense,
    norm: Norm,
    vars: Vec<(String, Var)>,
}

impl TabularEncoder {
    pub fn new(
        columns: Vec<String>,
        max_categories: usize,
        hidden: usize,
        seed: u64,
    ) -> Result<Self> {
        let c = columns.len();
        if c == 0 {
            candle_core::bail!("a tabular input needs at least one column");
        }
        let v = max_categories;
        let mut init = Init::new(seed);
        let mean = init.constant("stats.mean", &[c], 0.0)?;
        let std = init.constant("stats.std", &[c], 1.0)?;
        let vocab = init.constant("stats.vocab", &[c, v, 2], -1.0)?;
        let embeddings = init.uniform("embeddings", &[c * (v + 2), EMBEDDING], 0.5)?;
        let hidden_layer = init.linear("mlp.0", c * (2 + EMBEDDING), hidden)?;
        let out = init.linear("mlp.1", hidden, WIDTH)?;
        let norm = init.layer_norm("norm", WIDTH)?;
        Ok(Self {
            columns,
            max_categories: v,
            mean,
            std,
            vocab,
            embeddings,
            hidden: hidden_layer,
            out,
            norm,
            vars: init.finish(),
        })
    }

    /// The encoder of a compiled `tabular/mlp` input.
    pub fn for_input(input: &CompiledInput, seed: u64) -> Result<Self> {
        Self::new(
            columns(input),
            input.int_param("max_categories").unwrap_or(32).max(1) as usize,
            input.int_param("hidden").unwrap_or(128).max(1) as usize,
            seed,
        )
    }

    fn cells<'a>(&self, raw: &'a RawColumn) -> Result<&'a [Vec<Cell>]> {
        let RawColumn::Cells(rows) = raw else {
            candle_core::bail!(
                "a tabular input takes table cells, not {} (columns {})",
                raw.kind(),
                self.columns.join(", ")
            )
        };
        for (r, cells) in rows.iter().enumerate() {
            if !cells.is_empty() && cells.len() != self.columns.len() {
                candle_core::bail!(
                    "row {r} has {} cells; the tabular input reads {} columns ({})",
                    cells.len(),
                    self.columns.len(),
                    self.columns.join(", ")
                )
            }
        }
        Ok(rows)
    }

    /// Per column, the hash halves of its vocabulary in slot order.
    fn vocabulary(&self) -> Result<Vec<HashMap<[u32; 2], usize>>> {
        let vocab = self.vocab.as_tensor().to_vec3::<f32>()?;
        Ok(vocab
            .iter()
            .map(|slots| {
                slots
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h[0] >= 0.0)
                    .map(|(i, h)| ([h[0] as u32, h[1] as u32], i))
                    .collect()
            })
            .collect())
    }
}

impl Encoder for TabularEncoder {
    fn width(&self) -> usize {
        WIDTH
    }

    fn fit(&self, raw: &RawColumn) -> Result<()> {
        let rows = self.cells(raw)?;
        let c = self.columns.len();
        let (mut mean, mut std) = (vec![0f32; c], vec![1f32; c]);
        let mut vocab = vec![-1f32; c * self.max_categories * 2];
        for col in 0..c {
            let numbers: Vec<f64> = rows
                .iter()
                .filter_map(|r| match r.get(col) {
                    Some(Cell::Number(v)) => Some(*v),
                    _ => None,
                })
                .collect();
            if !numbers.is_empty() {
                let n = numbers.len() as f64;
                let m = numbers.iter().sum::<f64>() / n;
                let var = numbers.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
                mean[col] = m as f32;
                std[col] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
            }
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for r in rows {
                if let Some(Cell::Category(s)) = r.get(col) {
                    *counts.entry(s.as_str()).or_default() += 1;
                }
            }
            let mut kept: Vec<(&str, usize)> = counts
                .into_iter()
                .filter(|(_, n)| *n >= MIN_COUNT)
                .collect();
            kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            for (slot, (s, _)) in kept.into_iter().take(self.max_categories).enumerate() {
                let at = (col * self.max_categories + slot) * 2;
                vocab[at..at + 2].copy_from_slice(&hash_halves(s));
            }
        }
        set_values(&self.mean, mean)?;
        set_values(&self.std, std)?;
        set_values(&self.vocab, vocab)
    }

    /// `xs` (batch, 3 × columns): standardized numbers, missing indicators, then the
    /// embedding index of each column (0: not a category, 1: unknown, 2…: vocabulary).
    fn prepare(&self, raw: &RawColumn) -> Result<Prepared> {
        let rows = self.cells(raw)?;
        let c = self.columns.len();
        let mean = self.mean.as_tensor().to_vec1::<f32>()?;
        let std = self.std.as_tensor().to_vec1::<f32>()?;
        let vocab = self.vocabulary()?;
        let mut xs = Vec::with_capacity(rows.len() * 3 * c);
        let mut present = Vec::with_capacity(rows.len());
        for r in rows {
            present.push(if r.is_empty() { 0f32 } else { 1.0 });
            let (mut nums, mut missing, mut index) = (vec![0f32; c], vec![0f32; c], vec![0f32; c]);
            for (col, cell) in r.iter().enumerate() {
                match cell {
                    Cell::Number(v) => {
                        nums[col] = ((*v as f32 - mean[col]) / std[col]).clamp(-CLIP, CLIP)
                    }
                    Cell::Category(s) => {
                        let h = hash_halves(s);
                        index[col] = match vocab[col].get(&[h[0] as u32, h[1] as u32]) {
                            Some(slot) => (slot + 2) as f32,
                            None => 1.0,
                        };
                    }
                    Cell::Missing => missing[col] = 1.0,
                }
            }
            xs.extend(nums);
            xs.extend(missing);
            xs.extend(index);
        }
        let b = rows.len();
        Ok(Prepared::Dense(DenseBatch {
            xs: Tensor::from_vec(xs, (b, 3 * c), &Device::Cpu)?,
            mask: None,
            present: Tensor::from_vec(present, b, &Device::Cpu)?,
        }))
    }

    fn forward(&self, input: &Prepared, _train: bool) -> Result<Encoded> {
        let Prepared::Dense(batch) = input else {
            candle_core::bail!("the tabular encoder runs on table cells, not text")
        };
        let c = self.columns.len();
        let b = batch.xs.dim(0)?;
        let numeric = batch.xs.narrow(1, 0, 2 * c)?;
        // Row-major (column, slot) index into the flat embedding table.
        let offsets: Vec<f32> = (0..c)
            .map(|col| (col * (self.max_categories + 2)) as f32)
            .collect();
        let offsets = Tensor::from_vec(offsets, (1, c), &Device::Cpu)?;
        let index = batch
            .xs
            .narrow(1, 2 * c, c)?
            .broadcast_add(&offsets)?
            .to_dtype(DType::U32)?
            .flatten_all()?;
        let embedded = self
            .embeddings
            .as_tensor()
            .index_select(&index, 0)?
            .reshape((b, c * EMBEDDING))?;
        let features = Tensor::cat(&[&numeric, &embedded], 1)?;
        let hidden = ops::gelu(&self.hidden.forward(&features)?)?;
        let pooled = self.norm.forward(&self.out.forward(&hidden)?)?;
        // Rows without this input: zeros (fusion masks them by `present`).
        let pooled = pooled.broadcast_mul(&batch.present.unsqueeze(1)?)?;
        Ok(Encoded {
            tokens: pooled.unsqueeze(1)?,
            mask: Tensor::ones((b, 1), DType::F32, &Device::Cpu)?,
            pooled,
            present: Some(batch.present.clone()),
        })
    }

    fn adapter_vars(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    fn trained_vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(cells: &[&[Cell]]) -> RawColumn {
        RawColumn::Cells(cells.iter().map(|c| c.to_vec()).collect())
    }

    #[test]
    fn fits_statistics_and_vocabulary_on_training_rows() {
        let enc = TabularEncoder::new(vec!["age".into(), "ward".into()], 4, 16, 1).unwrap();
        let n = |v| Cell::Number(v);
        let k = |s: &str| Cell::Category(s.into());
        enc.fit(&col(&[
            &[n(10.0), k("a")],
            &[n(20.0), k("a")],
            &[Cell::Missing, k("b")],
            &[n(30.0), k("once")],
            &[n(40.0), k("b")],
        ]))
        .unwrap();
        assert_eq!(enc.mean.as_tensor().to_vec1::<f32>().unwrap()[0], 25.0);
        let std = enc.std.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((std - 125f32.sqrt()).abs() < 1e-4);
        let Prepared::Dense(b) = enc
            .prepare(&col(&[
                &[n(25.0), k("b")],
                &[Cell::Missing, k("once")],
                &[n(35.0), k("never seen")],
                &[],
            ]))
            .unwrap()
        else {
            panic!()
        };
        let xs = b.xs.to_vec2::<f32>().unwrap();
        // [num age, num ward, missing age, missing ward, index age, index ward]
        assert_eq!(xs[0], vec![0.0, 0.0, 0.0, 0.0, 0.0, 3.0]); // "b" is the 2nd slot (a < b)
        assert_eq!(xs[1], vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0]); // seen once: unknown
        assert!((xs[2][0] - 10.0 / 125f32.sqrt()).abs() < 1e-5);
        assert_eq!(xs[2][5], 1.0);
        assert_eq!(
            b.present.to_vec1::<f32>().unwrap(),
            vec![1.0, 1.0, 1.0, 0.0]
        );
        let out = enc.forward(&Prepared::Dense(b), false).unwrap();
        assert_eq!(out.pooled.dims(), &[4, WIDTH]);
        assert_eq!(
            out.pooled
                .get(3)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }

    #[test]
    fn wrong_cell_counts_are_named() {
        let enc = TabularEncoder::new(vec!["a".into(), "b".into()], 4, 16, 1).unwrap();
        let err = enc
            .prepare(&col(&[&[Cell::Number(1.0)]]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 0 has 1 cells") && err.contains("a, b"),
            "{err}"
        );
        assert_eq!(cell(" 3.5 ", true), Ok(Cell::Number(3.5)));
        assert_eq!(cell("NA", true), Ok(Cell::Missing));
        assert!(cell("abc", true).unwrap_err().contains("abc"));
        assert_eq!(cell("x", false), Ok(Cell::Category("x".into())));
    }
}
