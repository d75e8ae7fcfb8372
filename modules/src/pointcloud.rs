//! `pointcloud/pointnet`: a 3D point cloud per row (PLY, XYZ or PCD, see
//! `tailor_media::pointcloud`) encoded by a PointNet trained from scratch.
//!
//! Preparation, per cloud: decoded under the media limits; sampled down to `points`
//! points without replacement (seeded by the cloud's own bytes, so a file always gives the
//! same sample) or padded by repeating points (a repeated point changes neither a max nor
//! the shape); centred on its centroid and scaled so its farthest point lies on the unit
//! sphere.
//!
//! The network is PointNet's shared MLP — the same layers on every point, as a matmul over
//! the points (a 1×1 convolution) — 4 → 64 → 128 → 256 with GELU, then the
//! max and the mean over the points (order does not matter), projected to 256. Each point
//! enters as `x, y, z` and its distance from the centroid. PointNet's input and feature
//! transform networks (T-nets) are left out: the clouds are centred and scaled, the
//! distance is a rotation-invariant feature a T-net would otherwise have to learn, and on
//! small datasets the T-nets mostly add parameters to overfit. There is no layer norm per
//! point: it would divide out each point's scale, and with it the distance from the centre
//! that tells a sphere from a cube; the pooled vector is layer-normed instead.
//!
//! Trained tensors ([`trained_vars`](crate::encoder::Encoder::trained_vars)): `mlp.{k}.*`,
//! `out.*`, `norm.*`.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tailor_media::Limits;
use tailor_media::pointcloud;

use crate::blueprint::CompiledInput;
use crate::catalog::{Modality, ModuleKind, ModuleSpec, ParamKind, ParamSpec, WeightSource};
use crate::encoder::{DenseBatch, Encoded, Encoder, FileValue, Prepared, RawColumn};
use crate::layers::{Dense, Init, Norm};
use crate::ops;

/// Width of the pooled vector.
pub const WIDTH: usize = 256;
/// Per point: x, y, z and the distance from the centroid.
const FEATURES: usize = 4;
const WIDTHS: [usize; 4] = [FEATURES, 64, 128, 256];

/// The catalog entry of `pointcloud/pointnet`.
pub fn spec() -> ModuleSpec {
    ModuleSpec {
        id: "pointcloud/pointnet".into(),
        kind: ModuleKind::Encoder,
        title: "3D point clouds (PointNet trained on your data)".into(),
        description: "PLY, XYZ or PCD scans sampled to a fixed number of points, centred \
                      and scaled, encoded by a PointNet trained from scratch."
            .into(),
        modality: Some(Modality::PointCloud),
        output_width: Some(WIDTH),
        tasks: vec![],
        lora_targets: vec![],
        default_lora_targets: vec![],
        params: vec![ParamSpec {
            name: "points".into(),
            description: "Points sampled from each cloud.".into(),
            kind: ParamKind::Integer {
                min: 16,
                max: 16384,
                default: 1024,
            },
        }],
        weights: WeightSource::None,
    }
}

pub struct PointNetEncoder {
    points: usize,
    limits: Limits,
    mlp: Vec<Dense>,
    out: Dense,
    norm: Norm,
    vars: Vec<(String, Var)>,
}

/// `n` points of `cloud`, centred and scaled to the unit sphere (see the module docs).
pub fn normalize(cloud: &[[f32; 3]], n: usize, seed: u64) -> Vec<[f32; 3]> {
    let mut idx: Vec<usize> = (0..cloud.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    idx.shuffle(&mut rng);
    let picked: Vec<[f32; 3]> = (0..n).map(|k| cloud[idx[k % idx.len().max(1)]]).collect();
    let mut c = [0f64; 3];
    for p in &picked {
        for a in 0..3 {
            c[a] += p[a] as f64 / n as f64;
        }
    }
    let centred: Vec<[f32; 3]> = picked
        .iter()
        .map(|p| [p[0] - c[0] as f32, p[1] - c[1] as f32, p[2] - c[2] as f32])
        .collect();
    let r = centred
        .iter()
        .map(|p| (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt())
        .fold(0f32, f32::max);
    let s = if r > 1e-12 { 1.0 / r } else { 1.0 };
    centred
        .into_iter()
        .map(|p| [p[0] * s, p[1] * s, p[2] * s])
        .collect()
}

/// A seed from a file's bytes (FNV-1a), so its sample is the same in every epoch and run.
fn seed_of(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl PointNetEncoder {
    pub fn new(points: usize, seed: u64) -> Result<Self> {
        let mut init = Init::new(seed);
        let mut mlp = Vec::new();
        for k in 0..WIDTHS.len() - 1 {
            mlp.push(init.linear(&format!("mlp.{k}"), WIDTHS[k], WIDTHS[k + 1])?);
        }
        let out = init.linear("out", 2 * WIDTHS[WIDTHS.len() - 1], WIDTH)?;
        let norm = init.layer_norm("norm", WIDTH)?;
        Ok(Self {
            points,
            limits: Limits::default(),
            mlp,
            out,
            norm,
            vars: init.finish(),
        })
    }

    /// The encoder of a compiled `pointcloud/pointnet` input.
    pub fn for_input(input: &CompiledInput, seed: u64) -> Result<Self> {
        Self::new(
            input.int_param("points").unwrap_or(1024).max(1) as usize,
            seed,
        )
    }

    fn decode(&self, file: &FileValue) -> Result<Vec<[f32; 3]>> {
        let cloud = pointcloud::parse(&file.bytes, &file.extension(), &self.limits)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", file.path)))?;
        Ok(normalize(&cloud.points, self.points, seed_of(&file.bytes)))
    }
}

impl Encoder for PointNetEncoder {
    fn width(&self) -> usize {
        WIDTH
    }

    /// `xs` (batch, points, 4): x, y, z, distance from the centroid.
    fn prepare(&self, raw: &RawColumn) -> Result<Prepared> {
        let RawColumn::Files(files) = raw else {
            candle_core::bail!("a point-cloud input takes files, not {}", raw.kind())
        };
        let n = self.points;
        let mut xs = vec![0f32; files.len() * n * FEATURES];
        let mut present = vec![0f32; files.len()];
        for (i, file) in files.iter().enumerate() {
            let Some(file) = file else { continue };
            present[i] = 1.0;
            for (k, p) in self.decode(file)?.iter().enumerate() {
                let at = (i * n + k) * FEATURES;
                xs[at..at + 3].copy_from_slice(p);
                xs[at + 3] = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
            }
        }
        let b = files.len();
        Ok(Prepared::Dense(DenseBatch {
            xs: Tensor::from_vec(xs, (b, n, FEATURES), &Device::Cpu)?,
            mask: None,
            present: Tensor::from_vec(present, b, &Device::Cpu)?,
        }))
    }

    fn forward(&self, input: &Prepared, _train: bool) -> Result<Encoded> {
        let Prepared::Dense(batch) = input else {
            candle_core::bail!("the point-cloud encoder runs on points, not text")
        };
        let b = batch.xs.dim(0)?;
        let mut h = batch.xs.clone();
        for layer in &self.mlp {
            h = ops::gelu(&layer.forward(&h)?)?;
        }
        let pooled = Tensor::cat(&[h.max(1)?, h.mean(1)?], 1)?;
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

    #[test]
    fn clouds_are_sampled_centred_and_scaled() {
        let cloud: Vec<[f32; 3]> = (0..10).map(|i| [i as f32 * 2.0 + 5.0, 1.0, 1.0]).collect();
        let p = normalize(&cloud, 4, 1);
        assert_eq!(p.len(), 4);
        let r = p.iter().map(|q| q[0].abs()).fold(0f32, f32::max);
        assert!((r - 1.0).abs() < 1e-6);
        let mean: f32 = p.iter().map(|q| q[0]).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6);
        // Padding repeats points: 3 points to 8.
        let p = normalize(&cloud[..3], 8, 1);
        assert_eq!(p.len(), 8);
        let enc = PointNetEncoder::new(8, 0).unwrap();
        let xyz = FileValue::new("a.xyz", b"0 0 0\n1 0 0\n0 1 0\n0 0 1\n".to_vec());
        let raw = RawColumn::Files(vec![Some(xyz.clone()), None]);
        let out = enc.forward(&enc.prepare(&raw).unwrap(), false).unwrap();
        assert_eq!(out.pooled.dims(), &[2, WIDTH]);
        assert_eq!(
            out.present.unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 0.0]
        );
        // The same file gives the same sample every time.
        let again = enc.prepare(&RawColumn::Files(vec![Some(xyz)])).unwrap();
        let Prepared::Dense(a) = enc.prepare(&raw).unwrap() else {
            panic!()
        };
        let Prepared::Dense(b) = again else { panic!() };
        assert_eq!(
            a.xs.get(0).unwrap().to_vec2::<f32>().unwrap(),
            b.xs.get(0).unwrap().to_vec2::<f32>().unwrap()
        );
        let bad = RawColumn::Files(vec![Some(FileValue::new("b.ply", b"ply\n".to_vec()))]);
        let err = enc.prepare(&bad).unwrap_err().to_string();
        assert!(err.starts_with("b.ply: "), "{err}");
    }
}
