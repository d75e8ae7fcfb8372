//! Audio decoding: WAV written here, FLAC/OGG/MP3 fixtures (tests/fixtures/make_fixtures.py),
//! limits checked from the header, truncated files refused, and the resampler's pass and
//! stop bands.

use std::f64::consts::PI;

use tailor_media::audio::{Clip, decode, resample};
use tailor_media::{Limits, MediaError};

/// A 16-bit PCM WAV file of `interleaved` samples.
fn wav_bytes(rate: u32, channels: u16, interleaved: &[i16]) -> Vec<u8> {
    let data_len = (interleaved.len() * 2) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * channels as u32 * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in interleaved {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

fn sine(rate: u32, freq: f64, seconds: f64, amplitude: f64) -> Vec<f64> {
    (0..(rate as f64 * seconds) as usize)
        .map(|i| amplitude * (2.0 * PI * freq * i as f64 / rate as f64).sin())
        .collect()
}

/// Amplitude of the `freq` component of `samples` (a single-bin DFT).
fn amplitude_at(samples: &[f32], rate: u32, freq: f64) -> f64 {
    let (mut re, mut im) = (0.0, 0.0);
    for (i, &x) in samples.iter().enumerate() {
        let phase = 2.0 * PI * freq * i as f64 / rate as f64;
        re += x as f64 * phase.cos();
        im += x as f64 * phase.sin();
    }
    2.0 * (re * re + im * im).sqrt() / samples.len() as f64
}

fn rms(samples: &[f32]) -> f64 {
    (samples.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

#[test]
fn a_stereo_wav_decodes_to_the_mean_of_its_channels() {
    let left = sine(8000, 500.0, 0.25, 0.5);
    let right = sine(8000, 1500.0, 0.25, 0.25);
    let interleaved: Vec<i16> = left
        .iter()
        .zip(&right)
        .flat_map(|(l, r)| [(l * 32767.0).round() as i16, (r * 32767.0).round() as i16])
        .collect();
    let clip = decode(&wav_bytes(8000, 2, &interleaved), "WAV", &Limits::default()).unwrap();
    assert_eq!(clip.sample_rate, 8000);
    assert_eq!(clip.samples.len(), 2000);
    for (i, s) in clip.samples.iter().enumerate() {
        let expected = (interleaved[2 * i] as f64 + interleaved[2 * i + 1] as f64) / 2.0 / 32768.0;
        assert!(
            (*s as f64 - expected).abs() < 1e-6,
            "sample {i}: {s} vs {expected}"
        );
    }
    assert!((clip.duration() - 0.25).abs() < 1e-9);
}

#[test]
fn a_truncated_wav_is_refused_as_truncated() {
    let samples: Vec<i16> = (0..4000).map(|i| (i % 200) as i16 * 100).collect();
    let mut bytes = wav_bytes(16000, 1, &samples);
    bytes.truncate(bytes.len() - 3000);
    let err = decode(&bytes, "wav", &Limits::default()).unwrap_err();
    match &err {
        MediaError::Malformed(msg) => assert!(msg.contains("truncated"), "{msg}"),
        other => panic!("expected a truncation error, got {other:?}"),
    }
    assert!(err.to_string().contains("4000 samples"), "{err}");

    // Cut inside the header: not a WAV file at all.
    let err = decode(&bytes[..20], "wav", &Limits::default()).unwrap_err();
    assert!(matches!(err, MediaError::Malformed(_)), "{err:?}");
    let err = decode(b"definitely not audio", "flac", &Limits::default()).unwrap_err();
    assert!(matches!(err, MediaError::Malformed(_)), "{err:?}");
}

#[test]
fn the_duration_limit_is_checked_from_the_header_before_decoding() {
    // The header claims an hour of 16 kHz audio; the file holds a few samples. The limit
    // is what is reported (decoding never starts), not the truncation.
    let mut bytes = wav_bytes(16000, 1, &[0, 1, 2, 3]);
    let claimed: u32 = 16000 * 2 * 3600;
    bytes[40..44].copy_from_slice(&claimed.to_le_bytes());
    bytes[4..8].copy_from_slice(&(36 + claimed).to_le_bytes());
    let limits = Limits {
        max_seconds: 60.0,
        ..Limits::default()
    };
    let err = decode(&bytes, "wav", &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the clip is 3600.0 seconds long; the limit is 60 seconds"
    );

    let samples = vec![0i16; 2 * 16000];
    let bytes = wav_bytes(16000, 2, &samples);
    let limits = Limits {
        max_samples: 20_000,
        ..Limits::default()
    };
    let err = decode(&bytes, "wav", &limits).unwrap_err();
    assert!(matches!(err, MediaError::TooLarge { .. }), "{err:?}");
    assert!(
        err.to_string().contains("32000 samples (2 channels)"),
        "{err}"
    );
    let limits = Limits {
        max_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        decode(&bytes, "wav", &limits),
        Err(MediaError::TooLarge { .. })
    ));
}

#[test]
fn unknown_extensions_are_unsupported() {
    let err = decode(b"RIFF", "aiff", &Limits::default()).unwrap_err();
    assert!(matches!(err, MediaError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains(".aiff"), "{err}");
}

#[test]
fn flac_ogg_and_mp3_decode_to_the_tone_they_hold() {
    // 0.5 s of 440 Hz at 22050 Hz, 0.5 left and 0.3 right: a 0.4 tone once downmixed.
    for (name, bytes) in [
        ("flac", &include_bytes!("fixtures/tone.flac")[..]),
        ("ogg", &include_bytes!("fixtures/tone.ogg")[..]),
        ("mp3", &include_bytes!("fixtures/tone.mp3")[..]),
    ] {
        let clip =
            decode(bytes, name, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(clip.sample_rate, 22050, "{name}");
        let len = clip.samples.len() as i64;
        // Lossy codecs may add an encoder delay of up to a couple of frames.
        assert!((len - 11025).abs() <= 3000, "{name}: {len} samples");
        // Skip the codec's start-up and end so only the steady tone is measured.
        let middle = &clip.samples[2000..8000];
        let at_440 = amplitude_at(middle, 22050, 440.0);
        assert!(
            (at_440 - 0.4).abs() < 0.02,
            "{name}: 440 Hz amplitude {at_440}"
        );
        let at_1000 = amplitude_at(middle, 22050, 1000.0);
        assert!(at_1000 < 0.01, "{name}: 1000 Hz amplitude {at_1000}");
    }
    // Cutting a FLAC file short is caught by its stated length.
    let flac = include_bytes!("fixtures/tone.flac");
    let err = decode(&flac[..flac.len() / 2], "flac", &Limits::default()).unwrap_err();
    assert!(matches!(err, MediaError::Malformed(_)), "{err:?}");
}

fn clip(rate: u32, samples: Vec<f64>) -> Clip {
    Clip {
        sample_rate: rate,
        samples: samples.into_iter().map(|x| x as f32).collect(),
    }
}

#[test]
fn resampling_keeps_the_pass_band_and_removes_what_would_alias() {
    // 1 kHz at 44.1 kHz → 16 kHz: the same sine, sample for sample, away from the ends.
    let out = resample(&clip(44100, sine(44100, 1000.0, 1.0, 0.5)), 16000).unwrap();
    assert_eq!(out.sample_rate, 16000);
    assert_eq!(out.samples.len(), 16000);
    let expected = sine(16000, 1000.0, 1.0, 0.5);
    let worst = (400..15600)
        .map(|i| (out.samples[i] as f64 - expected[i]).abs())
        .fold(0.0, f64::max);
    assert!(worst < 2e-3, "largest error {worst}");

    // 12 kHz cannot be represented at 16 kHz; a naive decimator would fold it to 4 kHz.
    let out = resample(&clip(44100, sine(44100, 12000.0, 1.0, 0.5)), 16000).unwrap();
    let leaked = rms(&out.samples[400..15600]);
    assert!(leaked < 1e-3, "12 kHz leaked through at RMS {leaked}");

    // Upsampling 8 kHz → 16 kHz: a 3 kHz tone stays a 3 kHz tone with its amplitude.
    let out = resample(&clip(8000, sine(8000, 3000.0, 0.5, 0.3)), 16000).unwrap();
    assert_eq!(out.samples.len(), 8000);
    let middle = &out.samples[400..7600];
    assert!((amplitude_at(middle, 16000, 3000.0) - 0.3).abs() < 3e-3);
    assert!(
        amplitude_at(middle, 16000, 5000.0) < 1e-3,
        "an image at 5 kHz"
    );

    // The same rate is the identity.
    let same = clip(16000, sine(16000, 440.0, 0.1, 0.2));
    assert_eq!(resample(&same, 16000).unwrap(), same);
}
