//! Audio clips: WAV, FLAC, MP3 and OGG/Vorbis decoded to mono `f32` samples, and a
//! band-limited resampler.
//!
//! Decoding reads untrusted bytes, so the declared length (from the headers, where the format
//! has one) is checked against [`Limits`] before anything is decoded, and the running count
//! is checked again while packets are decoded (a header may lie or be absent). A file whose
//! data ends before its header says it should is refused as truncated rather than silently
//! shortened.

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::{Limits, MediaError, check_size, guarded};

/// The extensions [`decode`] reads.
pub const EXTENSIONS: [&str; 5] = ["wav", "flac", "mp3", "ogg", "oga"];

/// A mono audio clip.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Samples per second.
    pub sample_rate: u32,
    /// Samples in [-1, 1] (channels averaged).
    pub samples: Vec<f32>,
}

impl Clip {
    /// Length in seconds.
    pub fn duration(&self) -> f64 {
        self.samples.len() as f64 / self.sample_rate.max(1) as f64
    }
}

/// Decodes a WAV, FLAC, MP3 or OGG/Vorbis file (`extension` without the dot, any case) to a
/// mono clip at the file's own sample rate: channels are averaged.
pub fn decode(bytes: &[u8], extension: &str, limits: &Limits) -> Result<Clip, MediaError> {
    check_size(bytes, limits)?;
    let extension = extension.trim_start_matches('.').to_ascii_lowercase();
    if !EXTENSIONS.contains(&extension.as_str()) {
        return Err(MediaError::Unsupported(format!(
            "`.{extension}` is not an audio format Tailor reads (WAV, FLAC, MP3, OGG/Vorbis)"
        )));
    }
    // Symphonia reads from an owned source; the copy is bounded by `max_bytes`.
    let owned = bytes.to_vec();
    guarded(move || decode_checked(owned, &extension, limits))
}

fn decode_checked(bytes: Vec<u8>, extension: &str, limits: &Limits) -> Result<Clip, MediaError> {
    let source = MediaSourceStream::new(
        Box::new(Cursor::new(bytes)),
        MediaSourceStreamOptions::default(),
    );
    let mut hint = Hint::new();
    hint.with_extension(extension);
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| MediaError::malformed(format!("not a readable .{extension} file ({e})")))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| MediaError::malformed("the file has no audio track"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let sample_rate = params
        .sample_rate
        .filter(|&r| r > 0)
        .ok_or_else(|| MediaError::malformed("the file does not say its sample rate"))?;
    let channels = params.channels.map(|c| c.count()).unwrap_or(1).max(1);

    // The declared length, when the headers give one: refuse before decoding anything.
    let declared = params.n_frames;
    if let Some(frames) = declared {
        check_length(frames, channels, sample_rate, limits)?;
    }

    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| MediaError::Unsupported(format!("the audio codec ({e})")))?;

    let mut samples: Vec<f32> = Vec::new();
    let mut interleaved: Option<SampleBuffer<f32>> = None;
    let (mut good_packets, mut bad_packets) = (0usize, 0usize);
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(MediaError::malformed(format!("reading the audio ({e})"))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A damaged packet of a compressed stream: decoders resynchronize on the next
            // one. A file made mostly of them is refused below.
            Err(SymphoniaError::DecodeError(_)) => {
                bad_packets += 1;
                continue;
            }
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(e) => return Err(MediaError::malformed(format!("decoding the audio ({e})"))),
        };
        good_packets += 1;
        let spec = *decoded.spec();
        let frames = decoded.frames();
        if frames == 0 {
            continue;
        }
        let packet_channels = spec.channels.count().max(1);
        let total_frames = samples.len() as u64 + frames as u64;
        check_length(total_frames, packet_channels, spec.rate.max(1), limits)?;
        let buffer = match &mut interleaved {
            Some(buffer) if buffer.capacity() >= decoded.capacity() * packet_channels => buffer,
            slot => slot.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        buffer.copy_interleaved_ref(decoded);
        let scale = 1.0 / packet_channels as f32;
        samples.extend(
            buffer
                .samples()
                .chunks_exact(packet_channels)
                .map(|frame| frame.iter().sum::<f32>() * scale),
        );
    }

    if samples.is_empty() {
        return Err(MediaError::malformed(if bad_packets > 0 {
            format!("none of the file's {bad_packets} audio packets decode")
        } else {
            "the file holds no audio samples".to_string()
        }));
    }
    // A PCM or FLAC header states the exact length: less data means the file was cut.
    // (Lossy codecs' declared lengths are estimates, within a packet or two.)
    let lossy = matches!(extension, "mp3" | "ogg" | "oga");
    if let Some(frames) = declared {
        let slack = if lossy { 4096 } else { 0 };
        if (samples.len() as u64) + slack < frames {
            return Err(MediaError::malformed(format!(
                "the file is truncated: its header says {frames} samples per channel, \
                 it holds {}",
                samples.len()
            )));
        }
    }
    if bad_packets > good_packets {
        return Err(MediaError::malformed(format!(
            "{bad_packets} of the file's audio packets are damaged"
        )));
    }
    if samples.iter().any(|s| !s.is_finite()) {
        return Err(MediaError::malformed("the audio holds non-finite samples"));
    }
    Ok(Clip {
        sample_rate,
        samples,
    })
}

/// Refuses `frames` samples per channel over the duration or sample limits.
fn check_length(
    frames: u64,
    channels: usize,
    sample_rate: u32,
    limits: &Limits,
) -> Result<(), MediaError> {
    let seconds = frames as f64 / sample_rate as f64;
    if seconds > limits.max_seconds {
        return Err(MediaError::too_large(
            "the clip",
            format!("{seconds:.1} seconds long"),
            format!("{} seconds", limits.max_seconds),
        ));
    }
    let total = frames.saturating_mul(channels as u64);
    if total > limits.max_samples {
        return Err(MediaError::too_large(
            "the clip",
            format!("{total} samples ({channels} channels)"),
            format!("{} samples", limits.max_samples),
        ));
    }
    Ok(())
}

/// Zero crossings of the sinc kernel on each side of a sample, at the lower of the two rates.
const KERNEL_ZEROS: usize = 24;
/// Table steps per zero crossing; values in between are interpolated linearly.
const KERNEL_STEPS: usize = 512;
/// Kaiser window shape: about 90 dB of stop-band attenuation.
const KAISER_BETA: f64 = 9.0;
/// Pass band as a fraction of the lower Nyquist frequency (the rest is the transition band).
const ROLLOFF: f64 = 0.94;

/// Resamples `clip` to `target_rate` with a Kaiser-windowed sinc filter whose cut-off sits
/// just under the lower of the two Nyquist frequencies, so downsampling does not fold high
/// frequencies back into the band (no aliasing) and upsampling adds no images.
pub fn resample(clip: &Clip, target_rate: u32) -> Result<Clip, MediaError> {
    if target_rate == 0 || clip.sample_rate == 0 {
        return Err(MediaError::malformed("a sample rate of 0"));
    }
    if clip.sample_rate == target_rate {
        return Ok(clip.clone());
    }
    let ratio = target_rate as f64 / clip.sample_rate as f64;
    // Cut-off in cycles per input sample × 2 (1.0 = the input's Nyquist frequency).
    let cutoff = ROLLOFF * ratio.min(1.0);
    let table = kernel_table();
    let input = &clip.samples;
    let out_len = ((input.len() as f64) * ratio).ceil() as usize;
    // The kernel spans ±KERNEL_ZEROS zero crossings of sinc(cutoff · t).
    let reach = KERNEL_ZEROS as f64 / cutoff;
    let mut output = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let t = n as f64 / ratio;
        let first = (t - reach).ceil().max(0.0) as usize;
        let last = ((t + reach).floor() as usize).min(input.len().saturating_sub(1));
        let mut acc = 0.0f64;
        for (k, &x) in input.iter().enumerate().take(last + 1).skip(first) {
            let u = (t - k as f64).abs() * cutoff * KERNEL_STEPS as f64;
            let i = u as usize;
            if i + 1 >= table.len() {
                continue;
            }
            let frac = u - i as f64;
            let w = table[i] + (table[i + 1] - table[i]) * frac;
            acc += w * x as f64;
        }
        output.push((acc * cutoff) as f32);
    }
    Ok(Clip {
        sample_rate: target_rate,
        samples: output,
    })
}

/// `sinc(u) · kaiser(u / KERNEL_ZEROS)` for `u` in `[0, KERNEL_ZEROS]` in steps of
/// `1 / KERNEL_STEPS` (u in zero crossings).
fn kernel_table() -> Vec<f64> {
    let n = KERNEL_ZEROS * KERNEL_STEPS + 2;
    let norm = bessel_i0(KAISER_BETA);
    (0..n)
        .map(|i| {
            let u = i as f64 / KERNEL_STEPS as f64;
            let sinc = if u == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * u).sin() / (std::f64::consts::PI * u)
            };
            let r = u / KERNEL_ZEROS as f64;
            let window = if r >= 1.0 {
                0.0
            } else {
                bessel_i0(KAISER_BETA * (1.0 - r * r).sqrt()) / norm
            };
            sinc * window
        })
        .collect()
}

/// The modified Bessel function of the first kind, order 0 (its power series).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..64 {
        term *= (half / k as f64) * (half / k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}
