//! Reading safetensors weights (one file, or a Hugging Face sharded set with its index)
//! into a model's parameters. The files are memory-mapped and only their headers read up
//! front; each tensor is then copied straight into its parameter's memory (through one
//! tensor-sized buffer only when its dtype or device differs) and its pages released, so
//! loading needs little more memory than the model itself.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::InputError;

/// The single-file weights of a Hugging Face folder.
pub const SINGLE: &str = "model.safetensors";
/// The index of sharded weights: `weight_map` names each tensor's shard.
pub const INDEX: &str = "model.safetensors.index.json";

/// Where one tensor lies.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    start: usize,
    end: usize,
    kind: Kind,
    shape: Vec<i64>,
}

/// The tensors of a set of weight files, by name.
pub struct WeightFiles {
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    entries: BTreeMap<String, Entry>,
}

impl WeightFiles {
    /// The weights of a model folder: `model.safetensors`, else the shards its
    /// `model.safetensors.index.json` lists. `what` names the folder's role in errors.
    pub fn open_folder(dir: &Path, what: &str) -> Result<Self, InputError> {
        let single = dir.join(SINGLE);
        if single.is_file() {
            return Self::open(&[single]);
        }
        let index = dir.join(INDEX);
        if !index.is_file() && dir.join("adapter_model.safetensors").is_file() {
            return Err(InputError::new(format!(
                "{what} {} holds a LoRA adapter (adapter_model.safetensors), not a whole model: continue it with --use-peft (its adapter_config.json gives the LoRA settings)",
                dir.display()
            )));
        }
        if !index.is_file() {
            return Err(InputError::new(format!(
                "{what} {} has no weights: neither {SINGLE} nor {INDEX} (only safetensors weights are read; convert a pytorch_model.bin with transformers' save_pretrained)",
                dir.display()
            )));
        }
        let shown = index.display();
        let text = std::fs::read_to_string(&index).map_err(|e| InputError::new(format!("cannot read {shown}: {e}")))?;
        let parsed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| InputError::new(format!("{shown} is not JSON: {e}")))?;
        let map =
            parsed["weight_map"].as_object().ok_or_else(|| InputError::new(format!("{shown} has no weight_map")))?;
        let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        shards.sort();
        shards.dedup();
        for shard in &shards {
            if shard.contains('/') || !dir.join(shard).is_file() {
                return Err(InputError::new(format!(
                    "{what} {}: shard {shard}, listed in {INDEX}, is missing; download or copy the whole folder",
                    dir.display()
                )));
            }
        }
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let weights = Self::open(&files)?;
        for (name, shard) in map {
            if !weights.contains(name) {
                return Err(InputError::new(format!(
                    "{what} {}: tensor {name} is not in {}, where {INDEX} puts it",
                    dir.display(),
                    shard.as_str().unwrap_or("?")
                )));
            }
        }
        Ok(weights)
    }

    /// The weights of `files` (safetensors), read by their headers.
    pub fn open(files: &[PathBuf]) -> Result<Self, InputError> {
        let mut entries = BTreeMap::new();
        let mut maps = Vec::with_capacity(files.len());
        for (index, path) in files.iter().enumerate() {
            let shown = path.display();
            let bad = |why: String| InputError::new(format!("{shown} is not a readable safetensors file ({why})"));
            let file = File::open(path).map_err(|e| InputError::new(format!("cannot read {shown}: {e}")))?;
            // SAFETY: the map is read-only; a file changed under a running process is a
            // mistake outside its control, as with any reader of model files.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(e.to_string()))?;
            let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| bad(describe(&e)))?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let kind = kind_of(info.dtype)
                    .ok_or_else(|| bad(format!("tensor {name} has dtype {:?}, which is not supported", info.dtype)))?;
                let (start, end) = info.data_offsets;
                let shape = info.shape.iter().map(|&d| d as i64).collect();
                let entry = Entry { file: index, start: data_start + start, end: data_start + end, kind, shape };
                entries.insert(name, entry);
            }
            maps.push(map);
        }
        Ok(Self { files: files.to_vec(), maps, entries })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    pub fn kind(&self, name: &str) -> Option<Kind> {
        self.entries.get(name).map(|e| e.kind)
    }

    /// Copies tensor `name` into `target`, which has its shape (any dtype and device).
    pub fn read_into(&self, name: &str, target: &Tensor) -> Result<(), String> {
        let entry = self.entries.get(name).ok_or_else(|| format!("no tensor {name}"))?;
        if entry.shape != target.size() {
            return Err(format!("{name} is {:?}, the model has {:?}", entry.shape, target.size()));
        }
        let map = &self.maps[entry.file];
        let bytes = &map[entry.start..entry.end];
        let direct = target.device() == Device::Cpu && target.kind() == entry.kind && target.is_contiguous();
        if direct && !bytes.is_empty() {
            // SAFETY: the parameter is a contiguous CPU tensor of exactly these bytes (same
            // shape and kind), not borrowed elsewhere while loading; written in place.
            let into = unsafe { std::slice::from_raw_parts_mut(target.data_ptr() as *mut u8, bytes.len()) };
            into.copy_from_slice(bytes);
        } else if !bytes.is_empty() {
            let source = Tensor::from_data_size(bytes, &entry.shape, entry.kind);
            tch::no_grad(|| target.shallow_clone().copy_(&source.to_kind(target.kind()).to_device(target.device())));
        }
        // The copy is in the parameter now: drop the file's pages from this process (they
        // stay in the page cache), so the mapped file does not count twice.
        // SAFETY: a read-only shared file map; its pages are read again on demand.
        let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, entry.start, entry.end - entry.start) };
        Ok(())
    }

    /// Reads tensor `name` into a new CPU tensor of its own dtype.
    pub fn read(&self, name: &str) -> Result<Tensor, String> {
        let entry = self.entries.get(name).ok_or_else(|| format!("no tensor {name}"))?;
        let tensor = Tensor::empty(entry.shape.as_slice(), (entry.kind, Device::Cpu));
        self.read_into(name, &tensor)?;
        Ok(tensor)
    }

    /// The file that holds `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries.get(name).map(|e| self.files[e.file].as_path())
    }
}

/// The library's error in words a user can act on.
fn describe(error: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match error {
        E::MetadataIncompleteBuffer => "its tensors do not lie within the file: truncated or incomplete".to_owned(),
        E::HeaderTooSmall | E::InvalidHeaderLength => "the file is too short for its header".to_owned(),
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "its header is not safetensors JSON".to_owned()
        }
        other => format!("{other:?}"),
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// The safetensors dtype of a kind (the kinds a model's tensors have).
pub fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_read_into_parameters_of_any_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[0.5f64, -1.5]);
        Tensor::write_safetensors(&[("a", &a), ("b", &b)], &path).unwrap();
        let weights = WeightFiles::open(std::slice::from_ref(&path)).unwrap();
        assert_eq!(weights.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(weights.shape("a"), Some(&[2, 2][..]));
        let target = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
        weights.read_into("a", &target).unwrap();
        assert!(target.equal(&a));
        let target = Tensor::zeros([2], (Kind::BFloat16, Device::Cpu));
        weights.read_into("b", &target).unwrap();
        assert_eq!(Vec::<f32>::try_from(&target.to_kind(Kind::Float)).unwrap(), [0.5, -1.5]);
        let wrong = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        assert_eq!(weights.read_into("a", &wrong).unwrap_err(), "a is [2, 2], the model has [4]");
        // A file cut short is named before anything is read.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let error = WeightFiles::open(&[path]).err().unwrap().to_string();
        assert!(error.contains("do not lie within the file: truncated or incomplete"), "{error}");
    }
}
