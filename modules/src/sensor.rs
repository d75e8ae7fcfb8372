//! `sensor/tcn`: multichannel sensor recordings (one CSV or NPY file per row, see
//! `tailor_media::signal`) encoded by a temporal convolution network trained from scratch.
//!
//! Preparation, per recording:
//! 1. decoded under the media limits; its channel count must be the input's `channels`;
//! 2. resampled (linear interpolation) to the input's `sample_rate` when that is set and
//!    the file states its own rate; otherwise used at the file's rate;
//! 3. standardized per channel with the mean and standard deviation fitted on the training
//!    recordings (`stats.mean`, `stats.std`, stored with the trained weights);
//! 4. cut to `length` steps (the middle part of a longer recording) or padded at the end
//!    with zeros, with a mask of the real steps.
//!
//! The network: a linear lift to 32 features per step, then six residual blocks of
//! causal, dilated 1-D convolutions (kernel 3, dilations 1, 2, 4 … 32: a receptive field of
//! 127 steps), each `x + conv(GELU(LayerNorm(x)))`. Causal convolutions never look ahead,
//! so the padding after a recording never leaks into its real steps. The states are
//! pooled over the real steps (mean and max), then projected to 64. A row without a
//! recording is marked absent (`present` 0) for fusion to mask.
//!
//! The trained tensors are [`trained_vars`](crate::encoder::Encoder::trained_vars):
//! `stats.*` (fitted, no gradient), `lift.*`, `blocks.{k}.norm.*`, `blocks.{k}.conv.*`,
//! `out.*`, `norm.*`.

use candle_core::{DType, Device, Result, Tensor, Var};
use tailor_media::Limits;
use tailor_media::signal::{self, Signal};

use crate::blueprint::CompiledInput;
use crate::catalog::{Modality, ModuleKind, ModuleSpec, ParamKind, ParamSpec, WeightSource};
use crate::encoder::{DenseBatch, Encoded, Encoder, FileValue, Prepared, RawColumn};
use crate::layers::{Dense, Init, Norm, masked_max, masked_mean, set_values};
use crate::ops;

/// Width of the pooled vector.
pub const WIDTH: usize = 64;
const HIDDEN: usize = 32;
const KERNEL: usize = 3;
const DILATIONS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// The catalog entry of `sensor/tcn`.
pub fn spec() -> ModuleSpec {
    ModuleSpec {
        id: "sensor/tcn".into(),
        kind: ModuleKind::Encoder,
        title: "Sensor recordings (TCN trained on your data)".into(),
        description: "Multichannel time series (CSV or NPY per row), standardized per \
                      channel, cut or padded to a fixed length, encoded by a temporal \
                      convolution network trained from scratch."
            .into(),
        modality: Some(Modality::Sensor),
        output_width: Some(WIDTH),
        tasks: vec![],
        lora_targets: vec![],
        default_lora_targets: vec![],
        params: vec![
            ParamSpec {
                name: "channels".into(),
                description: "Channels of every recording (columns of the CSV besides time)."
                    .into(),
                kind: ParamKind::Integer {
                    min: 1,
                    max: 256,
                    default: 1,
                },
            },
            ParamSpec {
                name: "length".into(),
                description: "Time steps the network sees: longer recordings are cut to \
                              their middle, shorter ones padded."
                    .into(),
                kind: ParamKind::Integer {
                    min: 8,
                    max: 8192,
                    default: 256,
                },
            },
            ParamSpec {
                name: "sample_rate".into(),
                description: "Resample to this rate (Hz) when a file states its rate; 0 keeps \
                              each file's own."
                    .into(),
                kind: ParamKind::Number {
                    min: 0.0,
                    max: 1_000_000.0,
                    default: 0.0,
                },
            },
        ],
        weights: WeightSource::None,
    }
}

struct Block {
    norm: Norm,
    conv: Dense,
    dilation: usize,
}

pub struct SensorEncoder {
    channels: usize,
    length: usize,
    sample_rate: Option<f64>,
    limits: Limits,
    mean: Var,
    std: Var,
    lift: Dense,
    blocks: Vec<Block>,
    out: Dense,
    norm: Norm,
    vars: Vec<(String, Var)>,
}

/// Linear interpolation of a time-major signal to `rate`.
pub fn resample(s: &Signal, rate: f64) -> Vec<f32> {
    let Some(from) = s.sample_rate else {
        return s.data.clone();
    };
    if (from - rate).abs() < 1e-9 || s.len < 2 {
        return s.data.clone();
    }
    let c = s.channels.len();
    let out_len = ((s.len as f64) * rate / from).round().max(1.0) as usize;
    let mut out = Vec::with_capacity(out_len * c);
    for t in 0..out_len {
        let x = t as f64 * from / rate;
        let i = (x.floor() as usize).min(s.len - 1);
        let j = (i + 1).min(s.len - 1);
        let w = (x - i as f64) as f32;
        for ch in 0..c {
            out.push(s.data[i * c + ch] * (1.0 - w) + s.data[j * c + ch] * w);
        }
    }
    out
}

impl SensorEncoder {
    pub fn new(
        channels: usize,
        length: usize,
        sample_rate: Option<f64>,
        seed: u64,
    ) -> Result<Self> {
        let mut init = Init::new(seed);
        let mean = init.constant("stats.mean", &[channels], 0.0)?;
        let std = init.constant("stats.std", &[channels], 1.0)?;
        let lift = init.linear("lift", channels, HIDDEN)?;
        let blocks = DILATIONS
            .iter()
            .enumerate()
            .map(|(k, &dilation)| {
                init.scope(&format!("blocks.{k}"), |s| {
                    Ok(Block {
                        norm: s.layer_norm("norm", HIDDEN)?,
                        conv: s.linear("conv", KERNEL * HIDDEN, HIDDEN)?,
                        dilation,
                    })
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let out = init.linear("out", 2 * HIDDEN, WIDTH)?;
        let norm = init.layer_norm("norm", WIDTH)?;
        Ok(Self {
            channels,
            length,
            sample_rate,
            limits: Limits::default(),
            mean,
            std,
            lift,
            blocks,
            out,
            norm,
            vars: init.finish(),
        })
    }

    /// The encoder of a compiled `sensor/tcn` input.
    pub fn for_input(input: &CompiledInput, seed: u64) -> Result<Self> {
        Self::new(
            input.int_param("channels").unwrap_or(1).max(1) as usize,
            input.int_param("length").unwrap_or(256).max(1) as usize,
            input.number_param("sample_rate").filter(|r| *r > 0.0),
            seed,
        )
    }

    /// A recording decoded, checked and resampled: (time-major values, steps).
    fn decode(&self, file: &FileValue) -> Result<(Vec<f32>, usize)> {
        let s = signal::parse(&file.bytes, &file.extension(), &self.limits)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", file.path)))?;
        if s.channels.len() != self.channels {
            candle_core::bail!(
                "{}: the recording has {} channels ({}); this sensor input takes {}",
                file.path,
                s.channels.len(),
                s.channels.join(", "),
                self.channels
            )
        }
        let data = match self.sample_rate {
            Some(rate) => resample(&s, rate),
            None => s.data.clone(),
        };
        let len = data.len() / self.channels;
        Ok((data, len))
    }

    fn files<'a>(&self, raw: &'a RawColumn) -> Result<&'a [Option<FileValue>]> {
        match raw {
            RawColumn::Files(files) => Ok(files),
            other => candle_core::bail!("a sensor input takes files, not {}", other.kind()),
        }
    }

    /// `x + conv(GELU(LayerNorm(x)))` with a causal, dilated convolution over time.
    fn block(&self, block: &Block, xs: &Tensor) -> Result<Tensor> {
        let (b, l, h) = xs.dims3()?;
        let ys = ops::gelu(&block.norm.forward(xs)?)?;
        let pad = (KERNEL - 1) * block.dilation;
        let padded = Tensor::cat(
            &[&Tensor::zeros((b, pad, h), DType::F32, &Device::Cpu)?, &ys],
            1,
        )?;
        let taps = (0..KERNEL)
            .map(|j| padded.narrow(1, j * block.dilation, l))
            .collect::<Result<Vec<_>>>()?;
        xs + block.conv.forward(&Tensor::cat(&taps, 2)?)?
    }
}

impl Encoder for SensorEncoder {
    fn width(&self) -> usize {
        WIDTH
    }

    fn fit(&self, raw: &RawColumn) -> Result<()> {
        let c = self.channels;
        let (mut sum, mut sq, mut n) = (vec![0f64; c], vec![0f64; c], 0usize);
        for file in self.files(raw)?.iter().flatten() {
            let (data, len) = self.decode(file)?;
            for t in 0..len {
                for ch in 0..c {
                    let v = data[t * c + ch] as f64;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
            n += len;
        }
        if n == 0 {
            return Ok(());
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / n as f64) as f32).collect();
        let std: Vec<f32> = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let var = q / n as f64 - (*m as f64).powi(2);
                if var > 1e-12 { var.sqrt() as f32 } else { 1.0 }
            })
            .collect();
        set_values(&self.mean, mean)?;
        set_values(&self.std, std)
    }

    /// `xs` (batch, length, channels) standardized, `mask` (batch, length).
    fn prepare(&self, raw: &RawColumn) -> Result<Prepared> {
        let files = self.files(raw)?;
        let (c, l) = (self.channels, self.length);
        let mean = self.mean.as_tensor().to_vec1::<f32>()?;
        let std = self.std.as_tensor().to_vec1::<f32>()?;
        let mut xs = vec![0f32; files.len() * l * c];
        let mut mask = vec![0f32; files.len() * l];
        let mut present = vec![0f32; files.len()];
        for (i, file) in files.iter().enumerate() {
            let Some(file) = file else { continue };
            present[i] = 1.0;
            let (data, len) = self.decode(file)?;
            let start = len.saturating_sub(l) / 2;
            for t in 0..len.min(l) {
                mask[i * l + t] = 1.0;
                for ch in 0..c {
                    let v = data[(start + t) * c + ch];
                    xs[(i * l + t) * c + ch] = (v - mean[ch]) / std[ch];
                }
            }
        }
        let b = files.len();
        Ok(Prepared::Dense(DenseBatch {
            xs: Tensor::from_vec(xs, (b, l, c), &Device::Cpu)?,
            mask: Some(Tensor::from_vec(mask, (b, l), &Device::Cpu)?),
            present: Tensor::from_vec(present, b, &Device::Cpu)?,
        }))
    }

    fn forward(&self, input: &Prepared, _train: bool) -> Result<Encoded> {
        let Prepared::Dense(batch) = input else {
            candle_core::bail!("the sensor encoder runs on recordings, not text")
        };
        let b = batch.xs.dim(0)?;
        let mask = match &batch.mask {
            Some(m) => m.clone(),
            None => Tensor::ones((b, self.length), DType::F32, &Device::Cpu)?,
        };
        let mut h = self.lift.forward(&batch.xs)?;
        for block in &self.blocks {
            h = self.block(block, &h)?;
        }
        let pooled = Tensor::cat(&[masked_mean(&h, &mask)?, masked_max(&h, &mask)?], 1)?;
        let pooled = self.norm.forward(&self.out.forward(&pooled)?)?;
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

    fn csv(rows: &[[f32; 2]]) -> FileValue {
        let mut s = String::from("# sample_rate=10\na,b\n");
        for r in rows {
            s.push_str(&format!("{},{}\n", r[0], r[1]));
        }
        FileValue::new("x.csv", s.into_bytes())
    }

    #[test]
    fn prepares_standardized_cropped_and_padded_recordings() {
        let enc = SensorEncoder::new(2, 4, None, 0).unwrap();
        let long = csv(&[
            [1.0, 0.0],
            [2.0, 0.0],
            [3.0, 0.0],
            [4.0, 0.0],
            [5.0, 0.0],
            [6.0, 0.0],
        ]);
        let short = csv(&[[1.0, 1.0], [3.0, 1.0]]);
        let raw = RawColumn::Files(vec![Some(long), Some(short), None]);
        enc.fit(&raw).unwrap();
        // 8 samples of a: (21 + 4) / 8.
        assert!((enc.mean.as_tensor().to_vec1::<f32>().unwrap()[0] - 3.125).abs() < 1e-5);
        let Prepared::Dense(b) = enc.prepare(&raw).unwrap() else {
            panic!()
        };
        let mask = b.mask.as_ref().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(mask[0], vec![1.0; 4]);
        assert_eq!(mask[1], vec![1.0, 1.0, 0.0, 0.0]);
        assert_eq!(mask[2], vec![0.0; 4]);
        let xs = b.xs.to_vec3::<f32>().unwrap();
        let std = enc.std.as_tensor().to_vec1::<f32>().unwrap()[0];
        // The middle of the long one: steps 1..5 (values 2…5).
        assert!((xs[0][0][0] - (2.0 - 3.125) / std).abs() < 1e-5);
        assert_eq!(xs[1][3], vec![0.0, 0.0]);
        assert_eq!(b.present.to_vec1::<f32>().unwrap(), vec![1.0, 1.0, 0.0]);
        let out = enc.forward(&Prepared::Dense(b), false).unwrap();
        assert_eq!(out.pooled.dims(), &[3, WIDTH]);
        let bad = RawColumn::Files(vec![Some(FileValue::new("one.csv", b"a\n1\n".to_vec()))]);
        let err = enc.prepare(&bad).unwrap_err().to_string();
        assert!(
            err.contains("one.csv") && err.contains("1 channels"),
            "{err}"
        );
    }

    #[test]
    fn padding_after_a_recording_does_not_change_its_encoding() {
        // Causal convolutions + masked pooling: the same recording gives the same vector
        // whatever length it is padded to.
        let short = csv(&[[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]]);
        let raw = RawColumn::Files(vec![Some(short)]);
        let a = SensorEncoder::new(2, 8, None, 4).unwrap();
        let b = SensorEncoder::new(2, 32, None, 4).unwrap();
        let ya = a.forward(&a.prepare(&raw).unwrap(), false).unwrap().pooled;
        let yb = b.forward(&b.prepare(&raw).unwrap(), false).unwrap().pooled;
        let diff = (ya - yb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn resampling_interpolates() {
        let s = Signal {
            sample_rate: Some(2.0),
            channels: vec!["a".into()],
            data: vec![0.0, 2.0, 4.0],
            len: 3,
        };
        assert_eq!(resample(&s, 4.0), vec![0.0, 1.0, 2.0, 3.0, 4.0, 4.0]);
    }
}
