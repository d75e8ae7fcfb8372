//! One entry point for the dataset validator: does this file of an upload decode, by the
//! kind its extension names, within the limits? And if it does, a few numbers about it
//! (size, duration, channels, points) for the dataset's profile page.
//!
//! [`check`] dispatches on the extension to the decoder of each modality. A format that
//! no decoder in this crate reads yet (see [`decoder_for`]) is only size-checked and comes
//! back as [`Summary::Unchecked`], so the profile can say how many files were not opened.

use serde::{Deserialize, Serialize};

use crate::{Limits, MediaError, check_size, guarded};

/// The kind of file an extension names, as far as decoding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Image,
    Audio,
    /// A sensor recording: CSV with a header, or NPY.
    Signal,
    PointCloud,
    /// A clip as an archive of frames (ZIP or TAR), or a video file.
    Frames,
}

impl Kind {
    /// The kind a path's extension names (case-insensitive); `None` for anything else.
    pub fn of_path(path: &str) -> Option<Kind> {
        match extension(path).as_str() {
            "jpg" | "jpeg" | "png" | "webp" | "gif" | "bmp" | "tif" | "tiff" => Some(Kind::Image),
            "wav" | "flac" | "mp3" | "ogg" | "oga" | "m4a" | "aac" | "opus" => Some(Kind::Audio),
            "csv" | "tsv" | "npy" => Some(Kind::Signal),
            "ply" | "pcd" | "xyz" | "pts" | "las" | "laz" => Some(Kind::PointCloud),
            "zip" | "tar" | "mp4" | "mov" | "avi" | "mkv" | "webm" | "m4v" => Some(Kind::Frames),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Audio => "audio clip",
            Kind::Signal => "signal",
            Kind::PointCloud => "point cloud",
            Kind::Frames => "clip",
        }
    }
}

/// The lower-cased extension of a path, empty when it has none.
pub fn extension(path: &str) -> String {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    name.rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The range of one channel of a signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRange {
    pub name: String,
    pub min: f32,
    pub max: f32,
}

/// What a file decoded to, in a few numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Summary {
    Image {
        width: u32,
        height: u32,
    },
    Audio {
        seconds: f64,
        sample_rate: u32,
    },
    Signal {
        /// Time steps.
        len: usize,
        channels: Vec<ChannelRange>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample_rate: Option<f64>,
    },
    PointCloud {
        points: usize,
    },
    Frames {
        frames: usize,
        width: u32,
        height: u32,
    },
    /// No decoder in this build reads the format: only the file's size was checked.
    Unchecked {
        kind: Kind,
        format: String,
    },
}

/// Checks that `bytes`, the file at `path` (its extension names the format), decodes
/// within `limits`, and summarizes it. A decoder panic is an error
/// ([`MediaError::DecoderPanic`]), never a crash.
///
/// ```
/// use tailor_media::{Limits, MediaError, check::{check, Summary}};
/// let limits = Limits { max_bytes: 3, ..Limits::default() };
/// assert!(matches!(check("a.png", b"1234", &limits), Err(MediaError::TooLarge { .. })));
/// assert!(matches!(check("a.txt", b"12", &limits), Err(MediaError::Unsupported(_))));
/// ```
pub fn check(path: &str, bytes: &[u8], limits: &Limits) -> Result<Summary, MediaError> {
    let ext = extension(path);
    let Some(kind) = Kind::of_path(path) else {
        return Err(MediaError::Unsupported(if ext.is_empty() {
            "the file has no extension naming its format".into()
        } else {
            format!(".{ext} files are not images, audio, signals, point clouds or clips")
        }));
    };
    check_size(bytes, limits)?;
    match guarded(|| decode(kind, &ext, bytes, limits).transpose())? {
        Some(summary) => Ok(summary),
        None => Ok(Summary::Unchecked { kind, format: ext }),
    }
}

/// The decoder of each kind, or `None` where this build has none for the format yet.
///
/// The decoders are written one modality at a time (image.rs, audio.rs, signal.rs,
/// pointcloud.rs, frames.rs); until a kind's arm is here, its files are only size-checked
/// and the profile counts them as not opened.
fn decode(
    kind: Kind,
    ext: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Option<Result<Summary, MediaError>> {
    match kind {
        Kind::Image if crate::image::EXTENSIONS.contains(&ext) => Some(
            crate::image::decode(bytes, limits).map(|image| Summary::Image {
                width: image.width,
                height: image.height,
            }),
        ),
        Kind::Audio if crate::audio::EXTENSIONS.contains(&ext) => Some(
            crate::audio::decode(bytes, ext, limits).map(|clip| Summary::Audio {
                seconds: clip.duration(),
                sample_rate: clip.sample_rate,
            }),
        ),
        Kind::Signal if matches!(ext, "csv" | "tsv" | "npy") => {
            Some(crate::signal::parse(bytes, ext, limits).map(|signal| {
                let channels = (0..signal.channels.len())
                    .map(|c| {
                        let (min, max) = signal
                            .channel(c)
                            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                                (lo.min(v), hi.max(v))
                            });
                        ChannelRange {
                            name: signal.channels[c].clone(),
                            min,
                            max,
                        }
                    })
                    .collect();
                Summary::Signal {
                    len: signal.len,
                    channels,
                    sample_rate: signal.sample_rate,
                }
            }))
        }
        Kind::PointCloud if matches!(ext, "ply" | "xyz" | "pcd" | "pts") => Some(
            crate::pointcloud::parse(bytes, ext, limits).map(|cloud| Summary::PointCloud {
                points: cloud.points.len(),
            }),
        ),
        Kind::Image | Kind::Audio | Kind::Signal | Kind::PointCloud | Kind::Frames => None,
    }
}

/// A PNG of the image in `bytes`, shrunk to at most `side` pixels on its longest side, for
/// the thumbnails of a dataset's profile.
pub fn thumbnail_png(
    bytes: &[u8],
    limits: &Limits,
    side: u32,
) -> Result<Option<Vec<u8>>, MediaError> {
    let image = crate::image::decode(bytes, limits)?;
    let (w, h, rgb) = shrink(image.width, image.height, &image.rgb, side);
    encode_png(w, h, &rgb).map(Some)
}

/// Shrinks an RGB8 image to fit in `side`×`side`, averaging the pixels each new pixel
/// covers (a box filter: enough for a thumbnail).
pub fn shrink(width: u32, height: u32, rgb: &[u8], side: u32) -> (u32, u32, Vec<u8>) {
    let (w, h) = (width.max(1) as usize, height.max(1) as usize);
    let scale = (w.max(h) as f64 / side.max(1) as f64).max(1.0);
    let nw = ((w as f64 / scale).round() as usize).max(1);
    let nh = ((h as f64 / scale).round() as usize).max(1);
    let mut out = Vec::with_capacity(nw * nh * 3);
    for y in 0..nh {
        let (y0, y1) = (y * h / nh, ((y + 1) * h / nh).max(y * h / nh + 1));
        for x in 0..nw {
            let (x0, x1) = (x * w / nw, ((x + 1) * w / nw).max(x * w / nw + 1));
            let mut sum = [0u64; 3];
            for yy in y0..y1.min(h) {
                for xx in x0..x1.min(w) {
                    let at = (yy * w + xx) * 3;
                    for (c, s) in sum.iter_mut().enumerate() {
                        *s += u64::from(rgb.get(at + c).copied().unwrap_or(0));
                    }
                }
            }
            let n = ((y1.min(h) - y0) * (x1.min(w) - x0)).max(1) as u64;
            out.extend(sum.iter().map(|s| (s / n) as u8));
        }
    }
    (nw as u32, nh as u32, out)
}

/// Encodes an RGB8 image as a PNG (8-bit truecolor, no filtering, zlib-compressed).
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, MediaError> {
    use std::io::Write;
    let row = width as usize * 3;
    if rgb.len() != row * height as usize || width == 0 || height == 0 {
        return Err(MediaError::malformed(format!(
            "{} bytes are not a {width}×{height} RGB image",
            rgb.len()
        )));
    }
    let mut raw = Vec::with_capacity((row + 1) * height as usize);
    for line in rgb.chunks(row) {
        raw.push(0);
        raw.extend_from_slice(line);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&raw)
        .and_then(|_| z.finish())
        .map_err(|e| MediaError::malformed(e.to_string()))
        .map(|idat| {
            let mut ihdr = Vec::with_capacity(13);
            ihdr.extend_from_slice(&width.to_be_bytes());
            ihdr.extend_from_slice(&height.to_be_bytes());
            ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
            let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
            for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", Vec::new())] {
                png.extend_from_slice(&(data.len() as u32).to_be_bytes());
                let start = png.len();
                png.extend_from_slice(kind);
                png.extend_from_slice(&data);
                let crc = crc32fast::hash(&png[start..]);
                png.extend_from_slice(&crc.to_be_bytes());
            }
            png
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_shrink_and_encode_as_png() {
        // 4×2: left half red, right half blue; shrunk to fit 2 pixels.
        let mut rgb = Vec::new();
        for _ in 0..2 {
            for x in 0..4 {
                rgb.extend_from_slice(if x < 2 { &[255, 0, 0] } else { &[0, 0, 255] });
            }
        }
        // Through the image decoder and back: a thumbnail of the 4×2 PNG.
        let big = encode_png(4, 2, &rgb).unwrap();
        assert_eq!(
            check("x.png", &big, &Limits::default()).unwrap(),
            Summary::Image {
                width: 4,
                height: 2
            }
        );
        let thumb = thumbnail_png(&big, &Limits::default(), 2).unwrap().unwrap();
        let back = crate::image::decode(&thumb, &Limits::default()).unwrap();
        assert_eq!((back.width, back.height), (2, 1));
        assert_eq!(back.rgb, [255, 0, 0, 0, 0, 255]);
        assert!(check("x.png", &big[..big.len() / 2], &Limits::default()).is_err());
        let (w, h, small) = shrink(4, 2, &rgb, 2);
        assert_eq!((w, h), (2, 1));
        assert_eq!(small, [255, 0, 0, 0, 0, 255]);
        let png = encode_png(w, h, &small).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 2);
        // The IHDR chunk's CRC covers its type and data.
        let crc = u32::from_be_bytes(png[29..33].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&png[12..29]));
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        let mut raw = Vec::new();
        use std::io::Read;
        flate2::read::ZlibDecoder::new(&png[41..41 + idat_len])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw, [0, 255, 0, 0, 0, 0, 255]);
        assert!(encode_png(3, 1, &small).is_err());
    }

    #[test]
    fn signals_and_point_clouds_are_summarized() {
        let limits = Limits::default();
        let csv = b"time,x,y\n0.0,1,-2\n0.01,3,5\n0.02,-1,0\n";
        match check("s/1.csv", csv, &limits).unwrap() {
            Summary::Signal { len, channels, .. } => {
                assert_eq!(len, 3);
                assert_eq!(
                    channels,
                    [
                        ChannelRange {
                            name: "x".into(),
                            min: -1.0,
                            max: 3.0
                        },
                        ChannelRange {
                            name: "y".into(),
                            min: -2.0,
                            max: 5.0
                        }
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        let xyz = b"0 0 0\n1 0 0\n0 1 0\n";
        assert_eq!(
            check("p.xyz", xyz, &limits).unwrap(),
            Summary::PointCloud { points: 3 }
        );
        let broken = b"ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nend_header\n1\n";
        assert!(check("p.ply", broken, &limits).is_err());
    }

    #[test]
    fn extensions_name_the_kind() {
        assert_eq!(Kind::of_path("scans/A.PNG"), Some(Kind::Image));
        assert_eq!(Kind::of_path("heart/1.wav"), Some(Kind::Audio));
        assert_eq!(Kind::of_path("vib/7.npy"), Some(Kind::Signal));
        assert_eq!(Kind::of_path("parts/p.ply"), Some(Kind::PointCloud));
        assert_eq!(Kind::of_path("clips/c.zip"), Some(Kind::Frames));
        assert_eq!(Kind::of_path("notes.txt"), None);
        assert_eq!(Kind::of_path("README"), None);
        assert_eq!(extension("a/b.c/d"), "");
    }

    #[test]
    fn sizes_are_checked_before_anything_else() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let err = check("x.wav", &[0u8; 11], &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the file is 11 bytes; the limit is 10 bytes"
        );
        assert!(matches!(
            check("x.docx", &[0u8; 4], &limits),
            Err(MediaError::Unsupported(m)) if m.contains(".docx")
        ));
    }

    /// A mono 16-bit PCM WAV of `samples` samples at `rate` Hz.
    fn wav(rate: u32, samples: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..samples)
            .flat_map(|i| (((i as f32 * 0.05).sin() * 8000.0) as i16).to_le_bytes())
            .collect();
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn audio_is_decoded_and_a_truncated_header_is_an_error() {
        let limits = Limits::default();
        let clip = wav(8000, 4000);
        match check("a/clip.WAV", &clip, &limits).unwrap() {
            Summary::Audio {
                seconds,
                sample_rate,
            } => {
                assert_eq!(sample_rate, 8000);
                assert!((seconds - 0.5).abs() < 1e-6, "{seconds}");
            }
            other => panic!("{other:?}"),
        }
        assert!(check("clip.wav", &clip[..20], &limits).is_err());
    }
}
