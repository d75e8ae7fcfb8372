//! GE2E's front end, as resemblyzer 0.1.4 computes it (`resemblyzer/audio.py`,
//! `voice_encoder.py`): 16 kHz mono, the volume raised to −30 dBFS when quieter, a 40-band
//! mel power spectrogram (`librosa.feature.melspectrogram` with a 400-sample (25 ms) Hann
//! window, a 160-sample (10 ms) hop, `center=True` with zero padding as librosa ≥ 0.10 pads,
//! and librosa's Slaney mel filterbank), cut into partial utterances of 160 frames at
//! `rate` partials per second.
//!
//! Note: the spectrogram is *not* log-compressed; resemblyzer feeds the power mel values to
//! its LSTM as they are. resemblyzer's `preprocess_wav` also trims long silences with
//! webrtcvad; that step is not done here (clips are used whole).

use std::sync::OnceLock;

use candle_core::{Device, Result, Tensor};

/// Samples per second the encoder was trained at.
pub const SAMPLE_RATE: u32 = 16_000;
/// Mel bands.
pub const MEL_BANDS: usize = 40;
/// FFT size and window length: 25 ms.
pub const N_FFT: usize = 400;
/// Hop between frames: 10 ms.
pub const HOP: usize = 160;
/// Frames in one partial utterance (1.6 s).
pub const PARTIAL_FRAMES: usize = 160;
/// resemblyzer's `audio_norm_target_dBFS`.
const TARGET_DBFS: f64 = -30.0;
const INT16_MAX: f64 = 32767.0;
const BINS: usize = N_FFT / 2 + 1;

/// resemblyzer's `normalize_volume(wav, -30, increase_only=True)`: a clip quieter than
/// −30 dBFS (RMS) is scaled up to it; a louder one is left as it is. A silent clip stays
/// silent.
pub fn normalize_volume(wav: &mut [f32]) {
    if wav.is_empty() {
        return;
    }
    let mean_square = wav
        .iter()
        .map(|&x| (x as f64 * INT16_MAX).powi(2))
        .sum::<f64>()
        / wav.len() as f64;
    let rms = mean_square.sqrt();
    if rms == 0.0 {
        return;
    }
    let change = TARGET_DBFS - 20.0 * (rms / INT16_MAX).log10();
    if change < 0.0 {
        return;
    }
    let gain = 10f64.powf(change / 20.0) as f32;
    for x in wav {
        *x *= gain;
    }
}

/// librosa's Slaney mel scale (`htk=False`): linear below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// `librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)` (fmin 0, fmax 8 kHz, Slaney
/// normalization): `MEL_BANDS` rows of `BINS` weights.
pub fn mel_filterbank() -> Vec<[f32; BINS]> {
    let sr = SAMPLE_RATE as f64;
    let fft_freqs: Vec<f64> = (0..BINS)
        .map(|k| k as f64 * (sr / 2.0) / (BINS - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_f: Vec<f64> = (0..MEL_BANDS + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (MEL_BANDS + 1) as f64))
        .collect();
    (0..MEL_BANDS)
        .map(|m| {
            let mut row = [0f32; BINS];
            let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
            for (k, w) in row.iter_mut().enumerate() {
                let lower = (fft_freqs[k] - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
                let upper = (mel_f[m + 2] - fft_freqs[k]) / (mel_f[m + 2] - mel_f[m + 1]);
                *w = (lower.min(upper).max(0.0) * enorm) as f32;
            }
            row
        })
        .collect()
}

/// The constant matrices of the spectrogram: the windowed DFT basis (N_FFT, 2·BINS) —
/// cosines then sines, the periodic Hann window folded in — and the mel filterbank
/// transposed (BINS, MEL_BANDS).
struct Bases {
    dft: Tensor,
    mel: Tensor,
}

fn bases() -> Result<&'static Bases> {
    static BASES: OnceLock<Bases> = OnceLock::new();
    if let Some(b) = BASES.get() {
        return Ok(b);
    }
    let mut dft = vec![0f32; N_FFT * 2 * BINS];
    for n in 0..N_FFT {
        // scipy.signal.get_window("hann", 400, fftbins=True): periodic.
        let window = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos();
        for k in 0..BINS {
            // Reduce k·n mod N_FFT first so the angle stays exact.
            let angle = 2.0 * std::f64::consts::PI * ((k * n) % N_FFT) as f64 / N_FFT as f64;
            dft[n * 2 * BINS + k] = (window * angle.cos()) as f32;
            dft[n * 2 * BINS + BINS + k] = (-window * angle.sin()) as f32;
        }
    }
    let filters = mel_filterbank();
    let mut mel = vec![0f32; BINS * MEL_BANDS];
    for (m, row) in filters.iter().enumerate() {
        for (k, &w) in row.iter().enumerate() {
            mel[k * MEL_BANDS + m] = w;
        }
    }
    let built = Bases {
        dft: Tensor::from_vec(dft, (N_FFT, 2 * BINS), &Device::Cpu)?,
        mel: Tensor::from_vec(mel, (BINS, MEL_BANDS), &Device::Cpu)?,
    };
    Ok(BASES.get_or_init(|| built))
}

/// resemblyzer's `wav_to_mel_spectrogram`: `1 + len / HOP` frames of `MEL_BANDS` power mel
/// values, frame-major (`(frames, MEL_BANDS)` flattened). `wav` is 16 kHz.
pub fn mel_spectrogram(wav: &[f32]) -> Result<Vec<f32>> {
    let frames = 1 + wav.len() / HOP;
    let pad = N_FFT / 2;
    // center=True, pad_mode="constant": the signal sits between N_FFT/2 zeros each side.
    let sample = |i: usize| -> f32 {
        if i < pad || i - pad >= wav.len() {
            0.0
        } else {
            wav[i - pad]
        }
    };
    let mut framed = Vec::with_capacity(frames * N_FFT);
    for t in 0..frames {
        framed.extend((0..N_FFT).map(|n| sample(t * HOP + n)));
    }
    let bases = bases()?;
    let framed = Tensor::from_vec(framed, (frames, N_FFT), &Device::Cpu)?;
    let spectrum = framed.matmul(&bases.dft)?;
    let power = (spectrum.narrow(1, 0, BINS)?.sqr()? + spectrum.narrow(1, BINS, BINS)?.sqr()?)?;
    power.matmul(&bases.mel)?.flatten_all()?.to_vec1::<f32>()
}

/// Where resemblyzer's `compute_partial_slices` cuts a clip of `n_samples` samples: the
/// first frame of each partial (each `PARTIAL_FRAMES` long), `rate` partials per second, the
/// last one kept only when the clip covers at least `min_coverage` of it (or it is the only
/// one).
pub fn partial_starts(n_samples: usize, rate: f64, min_coverage: f64) -> Vec<usize> {
    let n_frames = (n_samples + 1).div_ceil(HOP);
    // np.round rounds half to even.
    let frame_step = ((SAMPLE_RATE as f64 / rate) / HOP as f64).round_ties_even() as usize;
    let frame_step = frame_step.clamp(1, PARTIAL_FRAMES);
    let steps = (n_frames as i64 - PARTIAL_FRAMES as i64 + frame_step as i64 + 1).max(1) as usize;
    let mut starts: Vec<usize> = (0..steps).step_by(frame_step).collect();
    if let Some(&last) = starts.last() {
        let (start, stop) = (last * HOP, (last + PARTIAL_FRAMES) * HOP);
        let coverage = (n_samples as f64 - start as f64) / (stop - start) as f64;
        if coverage < min_coverage && starts.len() > 1 {
            starts.pop();
        }
    }
    starts
}

/// A clip's partial utterances as resemblyzer's `embed_utterance` forms them: the clip
/// zero-padded to the end of its last partial, its mel spectrogram, and the
/// `PARTIAL_FRAMES`-frame windows of it. Returns one `(PARTIAL_FRAMES × MEL_BANDS)` block per
/// partial, frame-major.
pub fn partials(wav: &[f32], rate: f64, min_coverage: f64) -> Result<Vec<Vec<f32>>> {
    let starts = partial_starts(wav.len(), rate, min_coverage);
    let last_stop = starts
        .last()
        .map(|&s| (s + PARTIAL_FRAMES) * HOP)
        .unwrap_or(0);
    let mut padded = wav.to_vec();
    if last_stop >= padded.len() {
        padded.resize(last_stop, 0.0);
    }
    let mel = mel_spectrogram(&padded)?;
    Ok(starts
        .iter()
        .map(|&s| mel[s * MEL_BANDS..(s + PARTIAL_FRAMES) * MEL_BANDS].to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slaney_mel_scale_is_continuous_at_1_khz_and_inverts() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        for hz in [0.0, 250.0, 999.0, 1000.0, 3000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
    }

    #[test]
    fn partials_follow_resemblyzer() {
        // 2 s at 1.3 partials/s: frame step 77; 201 frames → starts 0, 77; the second
        // covers (32000 − 12320) / 25600 = 0.77 ≥ 0.75 of its span, so it stays.
        assert_eq!(partial_starts(32000, 1.3, 0.75), vec![0, 77]);
        // 1 s: one partial, padded.
        assert_eq!(partial_starts(16000, 1.3, 0.75), vec![0]);
        // 1.9 s: the second partial would cover (30400 − 12320) / 25600 = 0.71: dropped.
        assert_eq!(partial_starts(30400, 1.3, 0.75), vec![0]);
        let wav = vec![0.1f32; 16000];
        let p = partials(&wav, 1.3, 0.75).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].len(), PARTIAL_FRAMES * MEL_BANDS);
    }

    #[test]
    fn a_pure_tone_lights_the_mel_band_of_its_frequency() {
        // 1 kHz at amplitude 0.5: a full frame's power spectrum peaks at bin 25 with
        // |X|² = (0.5 · Σ window / 2)² = (0.5 · 200 / 2)² = 2500.
        let wav: Vec<f32> = (0..16000)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin())
            .collect();
        let mel = mel_spectrogram(&wav).unwrap();
        assert_eq!(mel.len(), (1 + 16000 / HOP) * MEL_BANDS);
        let frame = &mel[50 * MEL_BANDS..51 * MEL_BANDS];
        let peak = (0..MEL_BANDS)
            .max_by(|&a, &b| frame[a].total_cmp(&frame[b]))
            .unwrap();
        let filters = mel_filterbank();
        let expected = (0..MEL_BANDS)
            .max_by(|&a, &b| filters[a][25].total_cmp(&filters[b][25]))
            .unwrap();
        assert_eq!(peak, expected);
        // The band's value is the bin's power (2500) under the band's weights of bins
        // 24..=26 (leakage of the Hann window into the neighbours: 1/4 each side).
        let w = &filters[peak];
        let predicted = 2500.0 * (w[25] + 0.25 * (w[24] + w[26]));
        assert!(
            (frame[peak] - predicted).abs() < 1e-3 * predicted,
            "{} vs {predicted}",
            frame[peak]
        );
    }

    #[test]
    fn quiet_clips_are_raised_to_minus_30_dbfs_and_loud_ones_kept() {
        let mut quiet = vec![0.001f32; 100];
        normalize_volume(&mut quiet);
        let rms = (quiet.iter().map(|x| x * x).sum::<f32>() / 100.0).sqrt();
        assert!((20.0 * (rms as f64 * 32767.0 / 32767.0).log10() + 30.0).abs() < 1e-3);
        let mut loud = vec![0.5f32; 100];
        normalize_volume(&mut loud);
        assert_eq!(loud, vec![0.5f32; 100]);
        let mut silent = vec![0f32; 10];
        normalize_volume(&mut silent);
        assert_eq!(silent, vec![0f32; 10]);
    }
}
