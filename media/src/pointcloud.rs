//! 3D point clouds: PLY (ASCII, binary little- and big-endian), XYZ and PCD (ASCII and
//! binary) files, read as a list of `x, y, z` points.
//!
//! Only the vertex positions are kept: other vertex properties (normals, colours,
//! intensity) are skipped, and so are the elements after the vertices (faces). The declared
//! point count is checked against `max_points` before anything is allocated, and a body
//! shorter than its header promises is refused rather than padded. Compressed PCD
//! (`DATA binary_compressed`) is not read. Non-finite coordinates are refused.

use crate::{Limits, MediaError, check_size, guarded};

/// A decoded point cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct PointCloud {
    pub points: Vec<[f32; 3]>,
}

/// Parses a point cloud; `extension` (lower case, no dot) picks the format.
pub fn parse(bytes: &[u8], extension: &str, limits: &Limits) -> Result<PointCloud, MediaError> {
    check_size(bytes, limits)?;
    let points = guarded(|| match extension {
        "ply" => parse_ply(bytes, limits),
        "xyz" | "txt" | "pts" => parse_xyz(bytes, limits),
        "pcd" => parse_pcd(bytes, limits),
        other => Err(MediaError::Unsupported(format!(
            ".{other} is not a point-cloud format (use .ply, .xyz or .pcd)"
        ))),
    })?;
    if points.is_empty() {
        return Err(MediaError::malformed("the point cloud has no points"));
    }
    if let Some(i) = points.iter().position(|p| p.iter().any(|v| !v.is_finite())) {
        return Err(MediaError::malformed(format!(
            "point {i} has a coordinate that is not a finite number"
        )));
    }
    Ok(PointCloud { points })
}

fn check_count(count: u64, limits: &Limits) -> Result<usize, MediaError> {
    if count > limits.max_points {
        return Err(MediaError::too_large(
            "the point cloud",
            format!("{count} points"),
            format!("{} points", limits.max_points),
        ));
    }
    Ok(count as usize)
}

/// Splits off the header lines up to and including the line `end` (ASCII), returning
/// them and the bytes after.
fn header_lines<'a>(
    bytes: &'a [u8],
    is_end: impl Fn(&str) -> bool,
    what: &str,
) -> Result<(Vec<String>, &'a [u8]), MediaError> {
    let mut lines = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let nl = bytes[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| at + p);
        let line = String::from_utf8_lossy(&bytes[at..nl]).trim().to_string();
        at = (nl + 1).min(bytes.len());
        let end = is_end(&line);
        lines.push(line);
        if end {
            return Ok((lines, &bytes[at..]));
        }
        if lines.len() > 10_000 {
            break;
        }
    }
    Err(MediaError::malformed(format!(
        "the {what} header does not end"
    )))
}

#[derive(Clone, Copy, PartialEq)]
enum Scalar {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Scalar {
    fn ply(name: &str) -> Option<Self> {
        Some(match name {
            "char" | "int8" => Scalar::I8,
            "uchar" | "uint8" => Scalar::U8,
            "short" | "int16" => Scalar::I16,
            "ushort" | "uint16" => Scalar::U16,
            "int" | "int32" => Scalar::I32,
            "uint" | "uint32" => Scalar::U32,
            "float" | "float32" => Scalar::F32,
            "double" | "float64" => Scalar::F64,
            _ => return None,
        })
    }

    fn pcd(kind: &str, size: &str) -> Option<Self> {
        Some(match (kind, size) {
            ("I", "1") => Scalar::I8,
            ("U", "1") => Scalar::U8,
            ("I", "2") => Scalar::I16,
            ("U", "2") => Scalar::U16,
            ("I", "4") => Scalar::I32,
            ("U", "4") => Scalar::U32,
            ("F", "4") => Scalar::F32,
            ("F", "8") => Scalar::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Scalar::I8 | Scalar::U8 => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I32 | Scalar::U32 | Scalar::F32 => 4,
            Scalar::F64 => 8,
        }
    }

    fn read(self, b: &[u8], big: bool) -> f64 {
        macro_rules! num {
            ($t:ty) => {{
                let a = b[..std::mem::size_of::<$t>()].try_into().expect("sized");
                (if big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }) as f64
            }};
        }
        match self {
            Scalar::I8 => b[0] as i8 as f64,
            Scalar::U8 => b[0] as f64,
            Scalar::I16 => num!(i16),
            Scalar::U16 => num!(u16),
            Scalar::I32 => num!(i32),
            Scalar::U32 => num!(u32),
            Scalar::F32 => num!(f32),
            Scalar::F64 => num!(f64),
        }
    }
}

/// A PLY property: its name and scalar type (`None` for a list).
type Property = (String, Option<Scalar>);

#[derive(PartialEq)]
enum PlyFormat {
    Ascii,
    Binary { big: bool },
}

fn parse_ply(bytes: &[u8], limits: &Limits) -> Result<Vec<[f32; 3]>, MediaError> {
    if !bytes.starts_with(b"ply") {
        return Err(MediaError::malformed(
            "not a PLY file (it must start with \"ply\")",
        ));
    }
    let (header, body) = header_lines(bytes, |l| l == "end_header", "PLY")?;
    let mut format = None;
    // The elements in file order: name, count, properties (None for a list property).
    let mut elements: Vec<(String, u64, Vec<Property>)> = Vec::new();
    for (n, line) in header.iter().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = |what: &str| MediaError::malformed(format!("PLY header line {}: {what}", n + 1));
        match words.as_slice() {
            ["format", "ascii", _] => format = Some(PlyFormat::Ascii),
            ["format", "binary_little_endian", _] => {
                format = Some(PlyFormat::Binary { big: false })
            }
            ["format", "binary_big_endian", _] => format = Some(PlyFormat::Binary { big: true }),
            ["format", ..] => return Err(bad("unknown format")),
            ["element", name, count] => {
                let count: u64 = count
                    .parse()
                    .map_err(|_| bad("the count is not a number"))?;
                elements.push((name.to_string(), count, Vec::new()));
            }
            ["property", "list", _, _, name] => {
                let el = elements
                    .last_mut()
                    .ok_or_else(|| bad("a property before any element"))?;
                el.2.push((name.to_string(), None));
            }
            ["property", ty, name] => {
                let ty = Scalar::ply(ty).ok_or_else(|| bad(&format!("unknown type {ty:?}")))?;
                let el = elements
                    .last_mut()
                    .ok_or_else(|| bad("a property before any element"))?;
                el.2.push((name.to_string(), Some(ty)));
            }
            _ => {}
        }
    }
    let format =
        format.ok_or_else(|| MediaError::malformed("the PLY header has no format line"))?;
    let first = elements.first();
    let Some((name, count, props)) = first else {
        return Err(MediaError::malformed("the PLY file declares no elements"));
    };
    if name != "vertex" {
        return Err(MediaError::malformed(format!(
            "the first PLY element is {name:?}; the vertices must come first"
        )));
    }
    let count = check_count(*count, limits)?;
    let pos = |axis: &str| {
        props
            .iter()
            .position(|(n, _)| n == axis)
            .ok_or_else(|| MediaError::malformed(format!("the PLY vertices have no {axis}")))
    };
    let (ix, iy, iz) = (pos("x")?, pos("y")?, pos("z")?);
    let mut points = Vec::with_capacity(count);
    match format {
        PlyFormat::Ascii => {
            let text = String::from_utf8_lossy(body);
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            for i in 0..count {
                let line = lines.next().ok_or_else(|| {
                    MediaError::malformed(format!(
                        "the PLY file ends after {i} of its {count} vertices"
                    ))
                })?;
                let values: Vec<&str> = line.split_whitespace().collect();
                if values.len() < props.len() {
                    return Err(MediaError::malformed(format!(
                        "PLY vertex {i}: {} values, the header declares {}",
                        values.len(),
                        props.len()
                    )));
                }
                let get = |k: usize| -> Result<f32, MediaError> {
                    values[k].parse::<f32>().map_err(|_| {
                        MediaError::malformed(format!(
                            "PLY vertex {i}: {:?} is not a number",
                            values[k]
                        ))
                    })
                };
                points.push([get(ix)?, get(iy)?, get(iz)?]);
            }
        }
        PlyFormat::Binary { big } => {
            let mut offsets = Vec::new();
            let mut stride = 0;
            for (n, ty) in props {
                let ty = ty.ok_or_else(|| {
                    MediaError::Unsupported(format!("a list property ({n}) on binary PLY vertices"))
                })?;
                offsets.push((stride, ty));
                stride += ty.size();
            }
            let need = count.checked_mul(stride).ok_or_else(|| {
                MediaError::malformed("the PLY vertex block is too large to address")
            })?;
            if body.len() < need {
                return Err(MediaError::malformed(format!(
                    "the PLY file is cut off: {} bytes of vertices, the header declares {count} × {stride}",
                    body.len()
                )));
            }
            for v in body[..need].chunks_exact(stride.max(1)) {
                let get = |k: usize| {
                    let (off, ty) = offsets[k];
                    ty.read(&v[off..], big) as f32
                };
                points.push([get(ix), get(iy), get(iz)]);
            }
        }
    }
    Ok(points)
}

fn parse_xyz(bytes: &[u8], limits: &Limits) -> Result<Vec<[f32; 3]>, MediaError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| MediaError::malformed(format!("the XYZ file is not text ({e})")))?;
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        let values: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
            .filter(|s| !s.is_empty())
            .collect();
        if values.len() < 3 {
            return Err(MediaError::malformed(format!(
                "line {}: {} values, a point needs x y z",
                n + 1,
                values.len()
            )));
        }
        let mut p = [0f32; 3];
        for k in 0..3 {
            p[k] = values[k].parse().map_err(|_| {
                MediaError::malformed(format!("line {}: {:?} is not a number", n + 1, values[k]))
            })?;
        }
        check_count(points.len() as u64 + 1, limits)?;
        points.push(p);
    }
    Ok(points)
}

fn parse_pcd(bytes: &[u8], limits: &Limits) -> Result<Vec<[f32; 3]>, MediaError> {
    let (header, body) = header_lines(bytes, |l| l.starts_with("DATA"), "PCD")?;
    let field = |key: &str| -> Option<Vec<String>> {
        header.iter().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(key)).then(|| words.map(String::from).collect())
        })
    };
    let fields =
        field("FIELDS").ok_or_else(|| MediaError::malformed("the PCD header has no FIELDS"))?;
    let sizes = field("SIZE").ok_or_else(|| MediaError::malformed("the PCD header has no SIZE"))?;
    let types = field("TYPE").ok_or_else(|| MediaError::malformed("the PCD header has no TYPE"))?;
    let counts = field("COUNT").unwrap_or_else(|| vec!["1".into(); fields.len()]);
    if sizes.len() != fields.len() || types.len() != fields.len() || counts.len() != fields.len() {
        return Err(MediaError::malformed(
            "the PCD header's FIELDS, SIZE, TYPE and COUNT differ in length",
        ));
    }
    let points: u64 = match field("POINTS") {
        Some(p) => p.first().and_then(|p| p.parse().ok()),
        None => {
            let w = field("WIDTH").and_then(|w| w.first().and_then(|v| v.parse::<u64>().ok()));
            let h = field("HEIGHT").and_then(|h| h.first().and_then(|v| v.parse::<u64>().ok()));
            w.zip(h).map(|(w, h)| w.saturating_mul(h))
        }
    }
    .ok_or_else(|| MediaError::malformed("the PCD header's POINTS is not a number"))?;
    let count = check_count(points, limits)?;
    // Each field's first value: (column offset in values, byte offset, scalar).
    let mut layout = Vec::new();
    let (mut col, mut byte) = (0usize, 0usize);
    for k in 0..fields.len() {
        let ty = Scalar::pcd(&types[k], &sizes[k]).ok_or_else(|| {
            MediaError::malformed(format!(
                "the PCD field {} has TYPE {} SIZE {}",
                fields[k], types[k], sizes[k]
            ))
        })?;
        let n: usize = counts[k]
            .parse()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                MediaError::malformed(format!("the PCD COUNT of {} is not valid", fields[k]))
            })?;
        layout.push((col, byte, ty));
        col += n;
        byte += n * ty.size();
    }
    let at = |axis: &str| {
        fields
            .iter()
            .position(|f| f == axis)
            .map(|k| layout[k])
            .ok_or_else(|| MediaError::malformed(format!("the PCD file has no field {axis}")))
    };
    let axes = [at("x")?, at("y")?, at("z")?];
    let data = header
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string();
    let mut points = Vec::with_capacity(count);
    match data.as_str() {
        "ascii" => {
            let text = String::from_utf8_lossy(body);
            let mut lines = text.lines().filter(|l| !l.trim().is_empty());
            for i in 0..count {
                let line = lines.next().ok_or_else(|| {
                    MediaError::malformed(format!(
                        "the PCD file ends after {i} of its {count} points"
                    ))
                })?;
                let values: Vec<&str> = line.split_whitespace().collect();
                if values.len() < col {
                    return Err(MediaError::malformed(format!(
                        "PCD point {i}: {} values, the header declares {col}",
                        values.len()
                    )));
                }
                let mut p = [0f32; 3];
                for (k, (c, _, _)) in axes.iter().enumerate() {
                    p[k] = values[*c].parse().map_err(|_| {
                        MediaError::malformed(format!(
                            "PCD point {i}: {:?} is not a number",
                            values[*c]
                        ))
                    })?;
                }
                points.push(p);
            }
        }
        "binary" => {
            let need = count
                .checked_mul(byte)
                .ok_or_else(|| MediaError::malformed("the PCD data is too large to address"))?;
            if body.len() < need {
                return Err(MediaError::malformed(format!(
                    "the PCD file is cut off: {} bytes of points, the header declares {count} × {byte}",
                    body.len()
                )));
            }
            for v in body[..need].chunks_exact(byte.max(1)) {
                let mut p = [0f32; 3];
                for (k, (_, off, ty)) in axes.iter().enumerate() {
                    p[k] = ty.read(&v[*off..], false) as f32;
                }
                points.push(p);
            }
        }
        other => {
            return Err(MediaError::Unsupported(format!(
                "PCD DATA {other:?} (use ascii or binary)"
            )));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTS: [[f32; 3]; 2] = [[1.0, 2.0, 3.0], [-1.5, 0.0, 4.25]];

    fn ply_binary(big: bool, count: usize) -> Vec<u8> {
        let fmt = if big {
            "binary_big_endian"
        } else {
            "binary_little_endian"
        };
        let mut out = format!(
            "ply\nformat {fmt} 1.0\ncomment made by a test\nelement vertex {count}\nproperty float x\nproperty float y\nproperty float z\nproperty uchar red\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n"
        )
        .into_bytes();
        for p in PTS {
            for v in p {
                out.extend(if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                });
            }
            out.push(200);
        }
        out
    }

    #[test]
    fn ply_ascii_and_binary() {
        let ascii = "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nproperty float nx\nend_header\n1 2 3 0.5\n-1.5 0 4.25 1\n";
        let l = Limits::default();
        assert_eq!(parse(ascii.as_bytes(), "ply", &l).unwrap().points, PTS);
        assert_eq!(parse(&ply_binary(false, 2), "ply", &l).unwrap().points, PTS);
        assert_eq!(parse(&ply_binary(true, 2), "ply", &l).unwrap().points, PTS);
    }

    #[test]
    fn malformed_ply_is_refused_with_a_reason() {
        let l = Limits::default();
        let mut cut = ply_binary(false, 2);
        cut.truncate(cut.len() - 5);
        let err = parse(&cut, "ply", &l).unwrap_err().to_string();
        assert!(err.contains("cut off"), "{err}");
        // More vertices declared than present.
        let err = parse(&ply_binary(false, 3), "ply", &l)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cut off"), "{err}");
        let ascii = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\nend_header\n1 2 3\n";
        let err = parse(ascii.as_bytes(), "ply", &l).unwrap_err().to_string();
        assert!(err.contains("ends after 1 of its 3 vertices"), "{err}");
        // A huge declared count is refused by the limit before allocating.
        let huge = "ply\nformat binary_little_endian 1.0\nelement vertex 99999999999\nproperty float x\nproperty float y\nproperty float z\nend_header\n";
        let err = parse(huge.as_bytes(), "ply", &l).unwrap_err();
        assert!(matches!(err, MediaError::TooLarge { .. }), "{err}");
        let err = parse(b"ply\nformat ascii 1.0\n", "ply", &l)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not end"), "{err}");
        let err = parse(b"solid cube", "ply", &l).unwrap_err().to_string();
        assert!(err.contains("not a PLY file"), "{err}");
        let no_z = "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nend_header\n1 2\n";
        let err = parse(no_z.as_bytes(), "ply", &l).unwrap_err().to_string();
        assert!(err.contains("no z"), "{err}");
    }

    #[test]
    fn xyz_and_pcd() {
        let l = Limits::default();
        let xyz = "# points\n1 2 3\n-1.5,0,4.25\n";
        assert_eq!(parse(xyz.as_bytes(), "xyz", &l).unwrap().points, PTS);
        let err = parse(b"1 2\n", "xyz", &l).unwrap_err().to_string();
        assert!(err.contains("line 1: 2 values"), "{err}");
        let small = Limits {
            max_points: 1,
            ..Limits::default()
        };
        assert!(matches!(
            parse(xyz.as_bytes(), "xyz", &small).unwrap_err(),
            MediaError::TooLarge { .. }
        ));

        let head = |data: &str, n: usize| {
            format!(
                "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n"
            )
        };
        let ascii = head("ascii", 2) + "1 2 3 0\n-1.5 0 4.25 7\n";
        assert_eq!(parse(ascii.as_bytes(), "pcd", &l).unwrap().points, PTS);
        let mut binary = head("binary", 2).into_bytes();
        for p in PTS {
            for v in p {
                binary.extend(v.to_le_bytes());
            }
            binary.extend(9u32.to_le_bytes());
        }
        assert_eq!(parse(&binary, "pcd", &l).unwrap().points, PTS);
        binary.truncate(binary.len() - 1);
        let err = parse(&binary, "pcd", &l).unwrap_err().to_string();
        assert!(err.contains("cut off"), "{err}");
        let huge = head("binary", 0).replace("POINTS 0", "POINTS 1000000000000");
        assert!(matches!(
            parse(huge.as_bytes(), "pcd", &l).unwrap_err(),
            MediaError::TooLarge { .. }
        ));
        let err = parse(head("binary_compressed", 2).as_bytes(), "pcd", &l).unwrap_err();
        assert!(matches!(err, MediaError::Unsupported(_)), "{err}");
    }
}
