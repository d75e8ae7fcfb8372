//! Sensor recordings: multichannel time series, one file per sample.
//!
//! Two formats:
//! - **CSV** (`.csv`, `.tsv`, `.txt`): a header row of channel names, then one row per time
//!   step. A column named `time`, `t`, `timestamp` or `seconds` holds the time of each step
//!   in seconds: it is not a channel, and the sample rate is taken from it (its steps must
//!   increase evenly, within 1%). Instead, a first line `# sample_rate=100` (or
//!   `sample_rate: 100`) may give the rate in Hz. Empty cells or `nan` are refused: a
//!   recording with gaps must be repaired before it can be trusted.
//! - **NPY** (`.npy`, NumPy's format, version 1–3): dtype `<f4`, `<f8`, `<i2`, `<i4` (or
//!   big-endian `>`), C order, shape `(T, C)` — time steps by channels, as a CSV reads — or
//!   `(T,)` for one channel. Fortran order is refused. NPY carries no rate or names:
//!   channels are named `ch0`, `ch1` … and the rate is unknown.
//!
//! The result is time-major: `data[t * channels + c]`. Limits (`max_samples` over all
//! channels, `max_channels`, `max_seconds` when the rate is known) are checked before the
//! data is allocated.

use crate::{Limits, MediaError, check_size, guarded};

/// A decoded recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// Samples per second, when the file says.
    pub sample_rate: Option<f64>,
    pub channels: Vec<String>,
    /// Time-major: `data[t * channels.len() + c]`.
    pub data: Vec<f32>,
    /// Time steps.
    pub len: usize,
}

impl Signal {
    /// Channel `c` over time.
    pub fn channel(&self, c: usize) -> impl Iterator<Item = f32> + '_ {
        let n = self.channels.len();
        self.data.iter().skip(c).step_by(n.max(1)).copied()
    }
}

const TIME_COLUMNS: [&str; 5] = ["time", "t", "timestamp", "seconds", "time_s"];

/// Parses a recording; `extension` (lower case, no dot) picks the format.
pub fn parse(bytes: &[u8], extension: &str, limits: &Limits) -> Result<Signal, MediaError> {
    check_size(bytes, limits)?;
    guarded(|| match extension {
        "csv" | "tsv" | "txt" => parse_csv(bytes, extension == "tsv", limits),
        "npy" => parse_npy(bytes, limits),
        other => Err(MediaError::Unsupported(format!(
            ".{other} is not a signal format (use .csv or .npy)"
        ))),
    })
}

fn check_shape(len: usize, channels: usize, limits: &Limits) -> Result<(), MediaError> {
    if channels == 0 {
        return Err(MediaError::malformed("the recording has no channels"));
    }
    if channels > limits.max_channels {
        return Err(MediaError::too_large(
            "the number of channels",
            channels,
            limits.max_channels,
        ));
    }
    let samples = (len as u64).saturating_mul(channels as u64);
    if samples > limits.max_samples {
        return Err(MediaError::too_large(
            "the recording",
            format!("{samples} samples"),
            format!("{} samples", limits.max_samples),
        ));
    }
    Ok(())
}

fn check_duration(len: usize, rate: Option<f64>, limits: &Limits) -> Result<(), MediaError> {
    if let Some(rate) = rate {
        let seconds = len as f64 / rate;
        if seconds > limits.max_seconds {
            return Err(MediaError::too_large(
                "the recording",
                format!("{seconds:.1} seconds"),
                format!("{} seconds", limits.max_seconds),
            ));
        }
    }
    Ok(())
}

fn parse_csv(bytes: &[u8], tabs: bool, limits: &Limits) -> Result<Signal, MediaError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| MediaError::malformed(format!("the CSV is not UTF-8 text ({e})")))?;
    let sep = if tabs { '\t' } else { ',' };
    let mut lines = text
        .trim_start_matches('\u{feff}')
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let mut declared_rate = None;
    let (header_no, header) = loop {
        let (n, line) = lines
            .next()
            .ok_or_else(|| MediaError::malformed("the CSV is empty"))?;
        let Some(comment) = line.trim().strip_prefix('#') else {
            break (n, line);
        };
        let comment = comment.trim();
        if let Some(value) = comment
            .strip_prefix("sample_rate")
            .map(|r| r.trim_start_matches([' ', '=', ':']).trim())
        {
            let rate: f64 = value.parse().map_err(|_| {
                MediaError::malformed(format!(
                    "line {}: the sample rate {value:?} is not a number",
                    n + 1
                ))
            })?;
            if !(rate.is_finite() && rate > 0.0) {
                return Err(MediaError::malformed(format!(
                    "line {}: the sample rate must be above 0",
                    n + 1
                )));
            }
            declared_rate = Some(rate);
        }
    };
    let names: Vec<String> = header.split(sep).map(|s| s.trim().to_string()).collect();
    if let Some(i) = names.iter().position(|n| n.parse::<f64>().is_ok()) {
        return Err(MediaError::malformed(format!(
            "line {}: the first row must name the channels, but column {} is the number {}",
            header_no + 1,
            i + 1,
            names[i]
        )));
    }
    let time_col = names
        .iter()
        .position(|n| TIME_COLUMNS.contains(&n.to_ascii_lowercase().as_str()));
    let channels: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != time_col)
        .map(|(_, n)| n.clone())
        .collect();
    // Rows are at most one per line: bound the allocation before reading them.
    let rows_bound = text.lines().count();
    check_shape(0, channels.len(), limits)?;
    let mut data = Vec::new();
    let mut times = Vec::new();
    let mut len = 0usize;
    for (n, line) in lines {
        let cells: Vec<&str> = line.split(sep).collect();
        if cells.len() != names.len() {
            return Err(MediaError::malformed(format!(
                "line {}: {} values, the header names {}",
                n + 1,
                cells.len(),
                names.len()
            )));
        }
        len += 1;
        check_shape(len, channels.len(), limits)?;
        if len == 1 {
            data.reserve(
                rows_bound.min(limits.max_samples as usize / channels.len().max(1))
                    * channels.len(),
            );
        }
        for (i, cell) in cells.iter().enumerate() {
            let v: f64 = cell.trim().parse().map_err(|_| {
                MediaError::malformed(format!(
                    "line {}, column {:?}: {:?} is not a number",
                    n + 1,
                    names[i],
                    cell.trim()
                ))
            })?;
            if !v.is_finite() {
                return Err(MediaError::malformed(format!(
                    "line {}, column {:?}: the value is not finite",
                    n + 1,
                    names[i]
                )));
            }
            if Some(i) == time_col {
                times.push(v);
            } else {
                data.push(v as f32);
            }
        }
    }
    if len == 0 {
        return Err(MediaError::malformed("the CSV has a header but no rows"));
    }
    let rate = match (time_col, declared_rate) {
        (Some(_), _) if times.len() >= 2 => Some(rate_from_times(&times)?),
        (_, rate) => rate,
    };
    check_duration(len, rate, limits)?;
    Ok(Signal {
        sample_rate: rate,
        channels,
        data,
        len,
    })
}

/// The rate of evenly spaced, increasing times.
fn rate_from_times(times: &[f64]) -> Result<f64, MediaError> {
    let step = (times[times.len() - 1] - times[0]) / (times.len() - 1) as f64;
    if step.is_nan() || step <= 0.0 {
        return Err(MediaError::malformed("the time column does not increase"));
    }
    for (i, w) in times.windows(2).enumerate() {
        if ((w[1] - w[0]) - step).abs() > 0.01 * step {
            return Err(MediaError::malformed(format!(
                "the time column is not evenly spaced (row {}: step {} instead of {step})",
                i + 2,
                w[1] - w[0]
            )));
        }
    }
    Ok(1.0 / step)
}

#[derive(Clone, Copy)]
enum Dtype {
    F4,
    F8,
    I2,
    I4,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F4 | Dtype::I4 => 4,
            Dtype::F8 => 8,
            Dtype::I2 => 2,
        }
    }
}

fn parse_npy(bytes: &[u8], limits: &Limits) -> Result<Signal, MediaError> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(MediaError::malformed(
            "not an NPY file (no \\x93NUMPY magic)",
        ));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(MediaError::malformed("the NPY header is cut off"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => {
            return Err(MediaError::malformed(format!(
                "NPY version {v} is not supported"
            )));
        }
    };
    let end = start
        .checked_add(header_len)
        .filter(|e| *e <= bytes.len())
        .ok_or_else(|| MediaError::malformed("the NPY header is cut off"))?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| MediaError::malformed("the NPY header is not text"))?;
    let descr = dict_value(header, "descr")
        .ok_or_else(|| MediaError::malformed("the NPY header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let (big, code) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') | Some(b'=') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr),
    };
    let dtype = match code {
        "f4" => Dtype::F4,
        "f8" => Dtype::F8,
        "i2" => Dtype::I2,
        "i4" => Dtype::I4,
        other => {
            return Err(MediaError::Unsupported(format!(
                "NPY dtype {other:?} (use float32, float64, int16 or int32)"
            )));
        }
    };
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| MediaError::malformed("the NPY header has no 'fortran_order'"))?;
    if fortran.trim() != "False" {
        return Err(MediaError::Unsupported(
            "Fortran-ordered NPY arrays (save with C order: np.ascontiguousarray)".into(),
        ));
    }
    let shape = dict_value(header, "shape")
        .ok_or_else(|| MediaError::malformed("the NPY header has no 'shape'"))?;
    let dims: Vec<usize> = shape
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>().map_err(|_| {
                MediaError::malformed(format!("the NPY shape {shape:?} is not numbers"))
            })
        })
        .collect::<Result<_, _>>()?;
    let (len, channels) = match dims.as_slice() {
        [t] => (*t, 1),
        [t, c] => (*t, *c),
        _ => {
            return Err(MediaError::malformed(format!(
                "the NPY array has shape {dims:?}; a recording is (time steps, channels)"
            )));
        }
    };
    check_shape(len, channels, limits)?;
    let count = len * channels;
    let body = &bytes[end..];
    let need = count * dtype.size();
    if body.len() < need {
        return Err(MediaError::malformed(format!(
            "the NPY data is cut off: {} bytes for {count} values of {} bytes",
            body.len(),
            dtype.size()
        )));
    }
    let mut data = Vec::with_capacity(count);
    for chunk in body[..need].chunks_exact(dtype.size()) {
        let v = match (dtype, big) {
            (Dtype::F4, false) => f32::from_le_bytes(chunk.try_into().expect("4 bytes")),
            (Dtype::F4, true) => f32::from_be_bytes(chunk.try_into().expect("4 bytes")),
            (Dtype::F8, false) => f64::from_le_bytes(chunk.try_into().expect("8 bytes")) as f32,
            (Dtype::F8, true) => f64::from_be_bytes(chunk.try_into().expect("8 bytes")) as f32,
            (Dtype::I2, false) => i16::from_le_bytes(chunk.try_into().expect("2 bytes")) as f32,
            (Dtype::I2, true) => i16::from_be_bytes(chunk.try_into().expect("2 bytes")) as f32,
            (Dtype::I4, false) => i32::from_le_bytes(chunk.try_into().expect("4 bytes")) as f32,
            (Dtype::I4, true) => i32::from_be_bytes(chunk.try_into().expect("4 bytes")) as f32,
        };
        if !v.is_finite() {
            return Err(MediaError::malformed(format!(
                "the NPY array holds a non-finite value at index {}",
                data.len()
            )));
        }
        data.push(v);
    }
    Ok(Signal {
        sample_rate: None,
        channels: (0..channels).map(|c| format!("ch{c}")).collect(),
        data,
        len,
    })
}

/// The raw text of `key`'s value in an NPY header dict (`{'descr': '<f4', 'shape': (3, 2), }`).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn csv_with_a_time_column() {
        let csv = "time,x,y\n0.00,1,2\n0.01,3,4\n0.02,5,6\n";
        let s = parse(csv.as_bytes(), "csv", &Limits::default()).unwrap();
        assert_eq!(s.channels, vec!["x", "y"]);
        assert_eq!(s.len, 3);
        assert_eq!(s.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert!((s.sample_rate.unwrap() - 100.0).abs() < 1e-6);
        assert_eq!(s.channel(1).collect::<Vec<_>>(), vec![2.0, 4.0, 6.0]);
    }

    #[test]
    fn csv_with_a_declared_rate_and_errors_that_name_the_line() {
        let csv = "# sample_rate=50\nacc\n1\n2\n";
        let s = parse(csv.as_bytes(), "csv", &Limits::default()).unwrap();
        assert_eq!(s.sample_rate, Some(50.0));
        let err = parse(b"a,b\n1,2\n3\n", "csv", &Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the file cannot be read: line 3: 1 values, the header names 2"
        );
        let err = parse(b"a,b\n1,x\n", "csv", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("line 2, column \"b\""), "{err}");
        let err = parse(b"1,2\n3,4\n", "csv", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("must name the channels"), "{err}");
        let err = parse(b"time,a\n0,1\n1,2\n3,3\n", "csv", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("not evenly spaced"), "{err}");
    }

    #[test]
    fn limits_are_checked() {
        let limits = Limits {
            max_samples: 5,
            ..Limits::default()
        };
        let err = parse(b"a,b\n1,2\n3,4\n5,6\n", "csv", &limits).unwrap_err();
        assert!(matches!(err, MediaError::TooLarge { .. }), "{err}");
        let limits = Limits {
            max_seconds: 1.0,
            ..Limits::default()
        };
        let err = parse(b"# sample_rate=1\na\n1\n2\n3\n", "csv", &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the recording is 3.0 seconds; the limit is 1 seconds"
        );
        // A huge declared NPY shape is refused before any allocation.
        let bytes = npy("<f4", "(100000000000, 3)", &[]);
        let err = parse(&bytes, "npy", &Limits::default()).unwrap_err();
        assert!(matches!(err, MediaError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn npy_dtypes_and_shapes() {
        let body: Vec<u8> = [1.5f32, -2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = parse(&npy("<f4", "(3, 2)", &body), "npy", &Limits::default()).unwrap();
        assert_eq!((s.len, s.channels.len()), (3, 2));
        assert_eq!(s.data, vec![1.5, -2.0, 3.0, 4.0, 5.0, 6.0]);
        let body: Vec<u8> = [7i16, -8].iter().flat_map(|v| v.to_be_bytes()).collect();
        let s = parse(&npy(">i2", "(2,)", &body), "npy", &Limits::default()).unwrap();
        assert_eq!((s.len, s.data.clone()), (2, vec![7.0, -8.0]));
        let body: Vec<u8> = [0.25f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = parse(&npy("<f8", "(1, 1)", &body), "npy", &Limits::default()).unwrap();
        assert_eq!(s.data, vec![0.25]);
        let err = parse(&npy("<f4", "(3, 2)", &body), "npy", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("cut off"), "{err}");
        let err = parse(&npy("<c8", "(1,)", &body), "npy", &Limits::default()).unwrap_err();
        assert!(matches!(err, MediaError::Unsupported(_)), "{err}");
        let err = parse(&npy("<f4", "(2, 2, 2)", &body), "npy", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("(time steps, channels)"), "{err}");
        let err = parse(b"\x93NUMPY\x01\x00\xff\xff{", "npy", &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("cut off"), "{err}");
        let err = parse(b"hello", "wav", &Limits::default()).unwrap_err();
        assert!(matches!(err, MediaError::Unsupported(_)));
    }
}
