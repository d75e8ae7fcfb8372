//! PyTorch's two `torch.save` layouts.
//!
//! Legacy (before 1.6): five pickles in a row — the magic number, the protocol version, a
//! dict of system facts (endianness, type sizes), the saved object itself with each
//! storage replaced by a persistent id `('storage', FloatStorage, key, location, numel,
//! view)`, and the list of storage keys — followed, for each key in that order, by the
//! storage's element count (8 bytes, little-endian) and its raw bytes.
//!
//! Zip (1.6 and later): `<archive>/data.pkl` is the saved object with the same persistent
//! ids, and `<archive>/data/<key>` holds each storage's raw bytes.
//!
//! In both, a tensor is the call `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, …)` (possibly wrapped in `_rebuild_parameter`); we read its arguments and copy
//! the elements out of the storage, honouring the strides.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Cursor, Read};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use super::TensorMeta;

/// The first pickle of a legacy file: protocol 2, `LONG1` of the 10-byte magic number
/// 0x1950a86a20f9469cfc6c, `STOP`.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];

/// The protocol version legacy files record.
const LEGACY_PROTOCOL: i64 = 1001;

/// One storage: its element type (by PyTorch's class name) and where its bytes are.
#[derive(Debug, Clone)]
struct Storage {
    class: String,
    bytes: Range<usize>,
}

/// One tensor as the pickle describes it.
#[derive(Debug, Clone)]
struct TensorRef {
    storage: String,
    /// In elements of the storage.
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// The tensors of a PyTorch file, with the bytes they are read from.
pub(super) struct TorchTensors {
    bytes: Vec<u8>,
    storages: HashMap<String, Storage>,
    tensors: BTreeMap<String, TensorRef>,
}

impl TorchTensors {
    /// Parses a legacy (non-zip) file.
    pub(super) fn legacy(bytes: Vec<u8>) -> Result<Self, String> {
        if !bytes.starts_with(&LEGACY_MAGIC) {
            return Err("the magic number is not PyTorch's".into());
        }
        let mut cursor = Cursor::new(&bytes[..]);
        cursor.set_position(LEGACY_MAGIC.len() as u64);
        let protocol = read_pickle(&mut cursor, "the protocol version")?;
        match protocol {
            Object::Int(v) if v as i64 == LEGACY_PROTOCOL => {}
            Object::Long(v) if v == LEGACY_PROTOCOL => {}
            other => return Err(format!("unsupported protocol version {other:?}")),
        }
        let sys_info = read_pickle(&mut cursor, "the system information")?;
        if let Object::Dict(entries) = &sys_info {
            for (key, value) in entries {
                if *key == Object::Unicode("little_endian".into()) && *value == Object::Bool(false)
                {
                    return Err("the file was written on a big-endian machine".into());
                }
            }
        }
        let root = read_pickle(&mut cursor, "the saved object")?;
        let keys = match read_pickle(&mut cursor, "the list of storages")? {
            Object::List(keys) => keys
                .into_iter()
                .map(|k| key_name(&k).ok_or_else(|| format!("storage key {k:?} is not a name")))
                .collect::<Result<Vec<_>, _>>()?,
            other => return Err(format!("expected the list of storage keys, got {other:?}")),
        };
        let classes = storage_classes(&root)?;
        let mut storages = HashMap::new();
        let mut pos = cursor.position() as usize;
        for key in keys {
            let class = classes
                .get(&key)
                .ok_or_else(|| format!("storage {key} is listed but no tensor uses it"))?;
            let size = element_size(class)
                .ok_or_else(|| format!("storage {key} has the unknown type {class}"))?;
            let count = bytes
                .get(pos..pos + 8)
                .ok_or_else(|| format!("the file ends before storage {key}"))?;
            let count = u64::from_le_bytes(count.try_into().map_err(|_| "short read")?) as usize;
            let start = pos + 8;
            let end = count
                .checked_mul(size)
                .and_then(|n| n.checked_add(start))
                .filter(|&end| end <= bytes.len())
                .ok_or_else(|| {
                    format!("the file ends inside storage {key} ({count} elements of {class})")
                })?;
            storages.insert(
                key,
                Storage {
                    class: class.clone(),
                    bytes: start..end,
                },
            );
            pos = end;
        }
        let tensors = tensor_refs(root)?;
        Self::checked(bytes, storages, tensors)
    }

    /// Parses a zip file.
    pub(super) fn zip(bytes: Vec<u8>) -> Result<Self, String> {
        let mut archive =
            zip::ZipArchive::new(Cursor::new(&bytes[..])).map_err(|e| format!("zip: {e}"))?;
        let pkl_name = archive
            .file_names()
            .filter_map(|n| n.ok())
            .find(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
            .map(|n| n.into_owned())
            .ok_or("the zip has no data.pkl")?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
        let root = {
            let mut pkl = Vec::new();
            archive
                .by_name(&pkl_name)
                .and_then(|mut f| f.read_to_end(&mut pkl).map_err(Into::into))
                .map_err(|e| format!("reading {pkl_name}: {e}"))?;
            read_pickle(&mut Cursor::new(&pkl[..]), "data.pkl")?
        };
        if let Ok(mut order) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut text = String::new();
            order
                .read_to_string(&mut text)
                .map_err(|e| format!("reading byteorder: {e}"))?;
            if text.trim() != "little" {
                return Err(format!("byte order `{}` is not supported", text.trim()));
            }
        }
        let classes = storage_classes(&root)?;
        let mut data = Vec::new();
        let mut storages = HashMap::new();
        for (key, class) in classes {
            let name = format!("{prefix}data/{key}");
            let start = data.len();
            archive
                .by_name(&name)
                .and_then(|mut f| f.read_to_end(&mut data).map_err(Into::into))
                .map_err(|e| format!("reading storage {name}: {e}"))?;
            storages.insert(
                key,
                Storage {
                    class,
                    bytes: start..data.len(),
                },
            );
        }
        let tensors = tensor_refs(root)?;
        Self::checked(data, storages, tensors)
    }

    /// Checks every tensor fits in its storage, so reading it later cannot go out of bounds.
    fn checked(
        bytes: Vec<u8>,
        storages: HashMap<String, Storage>,
        tensors: BTreeMap<String, TensorRef>,
    ) -> Result<Self, String> {
        for (name, t) in &tensors {
            let storage = storages.get(&t.storage).ok_or_else(|| {
                format!(
                    "tensor `{name}` uses storage {} which is not in the file",
                    t.storage
                )
            })?;
            let size = element_size(&storage.class).unwrap_or(1);
            let available = storage.bytes.len() / size;
            if t.shape.len() != t.stride.len() {
                return Err(format!(
                    "tensor `{name}` has {} sizes but {} strides",
                    t.shape.len(),
                    t.stride.len()
                ));
            }
            if t.shape.contains(&0) {
                continue;
            }
            let last = t
                .shape
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset, |acc, (&n, &s)| {
                    acc.checked_add((n - 1).checked_mul(s)?)
                });
            match last {
                Some(last) if last < available => {}
                _ => {
                    return Err(format!(
                        "tensor `{name}` ({:?}, strides {:?}, offset {}) does not fit in its storage of {available} elements",
                        t.shape, t.stride, t.offset
                    ));
                }
            }
        }
        Ok(Self {
            bytes,
            storages,
            tensors,
        })
    }

    pub(super) fn metas(&self) -> BTreeMap<String, TensorMeta> {
        self.tensors
            .iter()
            .map(|(name, t)| {
                let class = self
                    .storages
                    .get(&t.storage)
                    .map(|s| s.class.as_str())
                    .unwrap_or("?");
                let dtype = class.trim_end_matches("Storage").to_lowercase();
                (
                    name.clone(),
                    TensorMeta {
                        shape: t.shape.clone(),
                        dtype,
                    },
                )
            })
            .collect()
    }

    /// Copies the tensor `name` out of its storage, in row-major order.
    pub(super) fn read(&self, name: &str) -> Result<Tensor, String> {
        let t = self.tensors.get(name).ok_or("no such tensor")?;
        let storage = self
            .storages
            .get(&t.storage)
            .ok_or("its storage is missing")?;
        let (dtype, size) = match candle_dtype(&storage.class) {
            Some(dtype) => (dtype, element_size(&storage.class).unwrap_or(1)),
            None => return Err(format!("element type {} is not supported", storage.class)),
        };
        let src = &self.bytes[storage.bytes.clone()];
        let data = gather(src, size, &t.shape, &t.stride, t.offset);
        let tensor = Tensor::from_raw_buffer(&data, dtype, &t.shape, &Device::Cpu)
            .map_err(|e| e.to_string())?;
        // PyTorch's bool is one byte of 0/1, which candle holds as u8.
        Ok(tensor)
    }
}

/// Reads one pickle with candle's interpreter; a panic inside it (it was written for
/// trusted files) becomes an error.
fn read_pickle<R: BufRead>(reader: &mut R, what: &str) -> Result<Object, String> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut stack = Stack::empty();
        stack.read_loop(reader)?;
        stack.finalize()
    }));
    match result {
        Ok(Ok(object)) => Ok(object),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: the pickle cannot be interpreted")),
    }
}

/// A dict key or storage key as a name segment.
fn key_name(key: &Object) -> Option<String> {
    match key {
        Object::Unicode(s) => Some(s.clone()),
        Object::Int(i) => Some(i.to_string()),
        Object::Long(i) => Some(i.to_string()),
        Object::Bool(b) => Some(if *b { "True" } else { "False" }.into()),
        _ => None,
    }
}

fn element_size(class: &str) -> Option<usize> {
    Some(match class {
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        "ComplexDoubleStorage" => 16,
        _ => return None,
    })
}

fn candle_dtype(class: &str) -> Option<DType> {
    Some(match class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "ByteStorage" | "BoolStorage" => DType::U8,
        _ => return None,
    })
}

/// `('storage', <class>, key, location, numel[, view_metadata])` → (key, class name).
fn storage_id(id: &Object) -> Result<(String, String), String> {
    let Object::Tuple(parts) = id else {
        return Err(format!("unexpected persistent id {id:?}"));
    };
    match parts.as_slice() {
        [
            Object::Unicode(tag),
            Object::Class { class_name, .. },
            key,
            _location,
            _numel,
            rest @ ..,
        ] if tag == "storage" => {
            if let Some(view) = rest.first()
                && *view != Object::None
            {
                return Err("storage views (PyTorch < 0.4) are not supported".into());
            }
            let key = key_name(key).ok_or_else(|| format!("storage key {key:?} is not a name"))?;
            Ok((key, class_name.clone()))
        }
        _ => Err(format!("unexpected persistent id {id:?}")),
    }
}

/// Every storage the object refers to, wherever it is, with its class.
fn storage_classes(root: &Object) -> Result<BTreeMap<String, String>, String> {
    fn visit(obj: &Object, out: &mut BTreeMap<String, String>) -> Result<(), String> {
        match obj {
            Object::PersistentLoad(id) => {
                let (key, class) = storage_id(id)?;
                out.insert(key, class);
            }
            Object::Tuple(items) | Object::List(items) => {
                for item in items {
                    visit(item, out)?;
                }
            }
            Object::Dict(entries) => {
                for (k, v) in entries {
                    visit(k, out)?;
                    visit(v, out)?;
                }
            }
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                visit(callable, out)?;
                visit(args, out)?;
            }
            _ => {}
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    visit(root, &mut out)?;
    Ok(out)
}

/// Every tensor reachable through dicts and lists from the root, by its dotted path.
fn tensor_refs(root: Object) -> Result<BTreeMap<String, TensorRef>, String> {
    fn visit(obj: Object, path: &str, out: &mut BTreeMap<String, TensorRef>) -> Result<(), String> {
        let join = |segment: &str| {
            if path.is_empty() {
                segment.to_string()
            } else {
                format!("{path}.{segment}")
            }
        };
        match obj {
            Object::Dict(entries) => {
                for (key, value) in entries {
                    if let Some(segment) = key_name(&key) {
                        visit(value, &join(&segment), out)?;
                    }
                }
            }
            Object::List(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    visit(item, &join(&i.to_string()), out)?;
                }
            }
            Object::Reduce { callable, args } => {
                if let Some(tensor) =
                    rebuild_tensor(*callable, *args).map_err(|e| format!("tensor `{path}`: {e}"))?
                {
                    out.insert(path.to_string(), tensor);
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    visit(root, "", &mut out)?;
    Ok(out)
}

/// The tensor a `REDUCE` rebuilds, if it is one of PyTorch's tensor rebuild functions.
fn rebuild_tensor(callable: Object, args: Object) -> Result<Option<TensorRef>, String> {
    let Object::Class {
        module_name,
        class_name,
    } = callable
    else {
        return Ok(None);
    };
    let Object::Tuple(mut args) = args else {
        return Ok(None);
    };
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(format!("{class_name} has {} arguments", args.len()));
            }
            let stride = dims(&args[3])?;
            let shape = dims(&args[2])?;
            let offset = match &args[1] {
                Object::Int(v) if *v >= 0 => *v as usize,
                Object::Long(v) if *v >= 0 => *v as usize,
                other => return Err(format!("storage offset {other:?}")),
            };
            let Object::PersistentLoad(id) = args.swap_remove(0) else {
                return Err("the tensor's storage is not a persistent id".into());
            };
            let (storage, _) = storage_id(&id)?;
            Ok(Some(TensorRef {
                storage,
                offset,
                shape,
                stride,
            }))
        }
        // nn.Parameter(data, requires_grad, …): the data is itself a rebuilt tensor.
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            if args.is_empty() {
                return Err(format!("{class_name} has no arguments"));
            }
            match args.swap_remove(0) {
                Object::Reduce { callable, args } => rebuild_tensor(*callable, *args),
                _ => Err(format!("{class_name} does not wrap a tensor")),
            }
        }
        // Tensor subclasses: (func, type, args, state).
        ("torch._tensor", "_rebuild_from_type_v2") => {
            if args.len() < 3 {
                return Err(format!("{class_name} has {} arguments", args.len()));
            }
            let inner = args.swap_remove(2);
            let func = args.swap_remove(0);
            rebuild_tensor(func, inner)
        }
        _ => Ok(None),
    }
}

fn dims(obj: &Object) -> Result<Vec<usize>, String> {
    match obj {
        Object::Tuple(items) => items
            .iter()
            .map(|item| match item {
                Object::Int(v) if *v >= 0 => Ok(*v as usize),
                Object::Long(v) if *v >= 0 => Ok(*v as usize),
                other => Err(format!("dimension {other:?}")),
            })
            .collect(),
        other => Err(format!("expected a tuple of dimensions, got {other:?}")),
    }
}

/// The elements at `offset + Σ index·stride`, in row-major order of `shape`.
fn gather(src: &[u8], size: usize, shape: &[usize], stride: &[usize], offset: usize) -> Vec<u8> {
    let count: usize = shape.iter().product();
    let row_major = {
        let mut expected = 1;
        let mut ok = true;
        for (&n, &s) in shape.iter().zip(stride).rev() {
            if n > 1 && s != expected {
                ok = false;
            }
            expected *= n;
        }
        ok
    };
    if row_major {
        return src[offset * size..(offset + count) * size].to_vec();
    }
    let mut out = Vec::with_capacity(count * size);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..count {
        let at = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&src[at * size..(at + 1) * size]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_follows_strides() {
        // A 2×3 row-major matrix read through its transpose's strides.
        let src: Vec<u8> = (0u8..6).collect();
        assert_eq!(gather(&src, 1, &[3, 2], &[1, 3], 0), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(gather(&src, 1, &[2, 3], &[3, 1], 0), src);
        assert_eq!(gather(&src, 2, &[2], &[1], 1), vec![2, 3, 4, 5]);
    }
}
