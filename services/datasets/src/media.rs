//! The files of an archive, decoded: each media file an archive holds is opened by
//! `tailor_media` under its limits (a broken image, a truncated WAV or a malformed PLY
//! becomes an error of every manifest row that names it), and what the files decoded to is
//! summarized per file column for the profile page: image sizes and a few thumbnails,
//! audio durations, signal lengths and per-channel ranges, point counts, frames per clip.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tailor_media::check::{ChannelRange, Summary};

use crate::profile::{NumberStats, ValueCount, top_k};

/// Thumbnails kept per column.
pub(crate) const THUMBNAILS_PER_COLUMN: usize = 8;
/// Thumbnails made while the archive is read (before columns are known).
pub(crate) const THUMBNAILS_MADE: usize = 24;
/// Longest side of a thumbnail, in pixels.
pub(crate) const THUMBNAIL_SIDE: u32 = 64;
/// Channels whose ranges are kept per column.
const MAX_CHANNELS: usize = 64;
/// Distinct sizes (or rates) counted per column.
const MAX_DISTINCT: usize = 1000;

/// What one file of the archive decoded to, or why it did not.
#[derive(Debug, Clone)]
pub(crate) enum FileCheck {
    Decoded(Summary),
    Failed(String),
}

/// A small picture of one image of the column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thumbnail {
    /// The file's path in the archive (relative to the manifest).
    pub path: String,
    /// A `data:image/png;base64,…` URI, at most 64 pixels on its longest side.
    pub data_uri: String,
}

/// Image sizes of a file column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSummary {
    pub width: NumberStats,
    pub height: NumberStats,
    /// The most common sizes (`"640×480"`), most common first.
    pub sizes: Vec<ValueCount>,
    pub thumbnails: Vec<Thumbnail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioSummary {
    pub seconds: NumberStats,
    /// Sample rates in Hz, most common first.
    pub sample_rates: Vec<ValueCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalSummary {
    /// Time steps per recording.
    pub length: NumberStats,
    /// Each channel's smallest and largest value over all recordings (the first 64
    /// channels by name).
    pub channels: Vec<ChannelRange>,
    pub sample_rates: Vec<ValueCount>,
}

/// What the files of one `file` column decoded to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaProfile {
    /// Rows whose file was opened and decoded.
    pub decoded: u64,
    /// Rows whose file is of a format this build cannot decode yet: only its size was
    /// checked.
    pub unchecked: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchecked_formats: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<SignalSummary>,
    /// Points per point cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<NumberStats>,
    /// Frames per clip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<NumberStats>,
}

/// A running min / max / mean.
#[derive(Debug, Default)]
struct Running {
    n: u64,
    min: f64,
    max: f64,
    sum: f64,
}

impl Running {
    fn add(&mut self, v: f64) {
        if self.n == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.n += 1;
        self.sum += v;
    }

    fn stats(&self) -> Option<NumberStats> {
        (self.n > 0).then(|| NumberStats {
            min: self.min,
            max: self.max,
            mean: self.sum / self.n as f64,
        })
    }
}

fn count(counts: &mut HashMap<String, u64>, key: String) {
    if let Some(c) = counts.get_mut(&key) {
        *c += 1;
    } else if counts.len() < MAX_DISTINCT {
        counts.insert(key, 1);
    }
}

/// Bounded statistics of the files of one column, updated row by row.
#[derive(Debug, Default)]
pub(crate) struct MediaStats {
    decoded: u64,
    unchecked: u64,
    unchecked_formats: Vec<String>,
    widths: Running,
    heights: Running,
    sizes: HashMap<String, u64>,
    thumbnails: Vec<Thumbnail>,
    seconds: Running,
    audio_rates: HashMap<String, u64>,
    lengths: Running,
    channels: Vec<ChannelRange>,
    signal_rates: HashMap<String, u64>,
    points: Running,
    frames: Running,
}

impl MediaStats {
    pub fn observe(&mut self, path: &str, summary: &Summary, thumbnail: Option<&String>) {
        match summary {
            Summary::Unchecked { format, .. } => {
                self.unchecked += 1;
                if !self.unchecked_formats.contains(format) && self.unchecked_formats.len() < 10 {
                    self.unchecked_formats.push(format.clone());
                }
                return;
            }
            Summary::Image { width, height } => {
                self.widths.add(f64::from(*width));
                self.heights.add(f64::from(*height));
                count(&mut self.sizes, format!("{width}×{height}"));
                if let Some(uri) = thumbnail
                    && self.thumbnails.len() < THUMBNAILS_PER_COLUMN
                    && !self.thumbnails.iter().any(|t| t.path == path)
                {
                    self.thumbnails.push(Thumbnail {
                        path: path.to_string(),
                        data_uri: uri.clone(),
                    });
                }
            }
            Summary::Audio {
                seconds,
                sample_rate,
            } => {
                self.seconds.add(*seconds);
                count(&mut self.audio_rates, sample_rate.to_string());
            }
            Summary::Signal {
                len,
                channels,
                sample_rate,
            } => {
                self.lengths.add(*len as f64);
                for channel in channels {
                    if let Some(c) = self.channels.iter_mut().find(|c| c.name == channel.name) {
                        c.min = c.min.min(channel.min);
                        c.max = c.max.max(channel.max);
                    } else if self.channels.len() < MAX_CHANNELS {
                        self.channels.push(channel.clone());
                    }
                }
                if let Some(rate) = sample_rate {
                    count(&mut self.signal_rates, format!("{rate}"));
                }
            }
            Summary::PointCloud { points } => self.points.add(*points as f64),
            Summary::Frames { frames, .. } => self.frames.add(*frames as f64),
        }
        self.decoded += 1;
    }

    pub fn finish(self) -> MediaProfile {
        MediaProfile {
            decoded: self.decoded,
            unchecked: self.unchecked,
            unchecked_formats: self.unchecked_formats,
            images: match (self.widths.stats(), self.heights.stats()) {
                (Some(width), Some(height)) => Some(ImageSummary {
                    width,
                    height,
                    sizes: top_k(&self.sizes, 10),
                    thumbnails: self.thumbnails,
                }),
                _ => None,
            },
            audio: self.seconds.stats().map(|seconds| AudioSummary {
                seconds,
                sample_rates: top_k(&self.audio_rates, 5),
            }),
            signals: self.lengths.stats().map(|length| SignalSummary {
                length,
                channels: self.channels,
                sample_rates: top_k(&self.signal_rates, 5),
            }),
            points: self.points.stats(),
            frames: self.frames.stats(),
        }
    }
}
