//! Writing a model's weights as Hugging Face's `save_pretrained` does: safetensors with
//! the `{"format": "pt"}` metadata that transformers checks, in one `model.safetensors`, or
//! above the shard size in `model-0000K-of-0000N.safetensors` files with an index.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::{Dtype, View};
use tch::{Device, Tensor};

use super::files::{dtype_of, INDEX, SINGLE};

/// Somewhere model files are written: a checkpoint being made, or output_dir (each file
/// atomically). `write` is given the path to write `name` at.
pub trait FileSink {
    fn write_file(&mut self, name: &str, write: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()>;
}

/// A tensor as the safetensors library writes it: CPU, contiguous, with its bytes.
struct CpuTensor {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: usize,
}

impl CpuTensor {
    fn new(name: &str, tensor: &Tensor) -> Result<Self> {
        let tensor = tensor.detach().to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(tensor.kind()).with_context(|| format!("{name} has kind {:?}", tensor.kind()))?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let bytes = tensor.numel() * tensor.kind().elt_size_in_bytes();
        Ok(Self { tensor, dtype, shape, bytes })
    }
}

impl View for &CpuTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if self.bytes == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: a contiguous CPU tensor owned by self, of exactly `bytes` bytes.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.bytes) })
    }

    fn data_len(&self) -> usize {
        self.bytes
    }
}

fn metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_owned(), "pt".to_owned())]))
}

/// Writes `tensors` as one safetensors file at `path`, with the `pt` format metadata.
pub fn write_file(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let cpu: Vec<(String, CpuTensor)> =
        tensors.iter().map(|(n, t)| Ok((n.clone(), CpuTensor::new(n, t)?))).collect::<Result<_>>()?;
    let views = cpu.iter().map(|(n, t)| (n.as_str(), t));
    safetensors::serialize_to_file(views, &metadata(), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(io) => anyhow::Error::new(io),
        other => anyhow::anyhow!("{other:?}"),
    })
}

/// A size such as "5GB", "500MB" or a number of bytes (huggingface_hub's units: KB, MB,
/// GB, TB are powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not a size: give bytes, or a number with KB, MB, GB or TB (e.g. 5GB)");
    if let Ok(bytes) = text.parse::<u64>() {
        return if bytes > 0 { Ok(bytes) } else { Err(bad()) };
    }
    let split = text.len().checked_sub(2).filter(|&i| text.is_char_boundary(i)).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let multiplier = match unit.to_ascii_uppercase().as_str() {
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return Err(bad()),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let bytes = value * multiplier;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Groups tensors (in order) into shards of at most `max_bytes`, as huggingface_hub does:
/// a tensor larger than the limit gets a shard of its own.
fn shards(sizes: &[usize], max_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_bytes = 0u64;
    for (index, &size) in sizes.iter().enumerate() {
        let size = size as u64;
        if size > max_bytes {
            shards.push(vec![index]);
            continue;
        }
        if current_bytes + size > max_bytes && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(index);
        current_bytes += size;
    }
    if !current.is_empty() || shards.is_empty() {
        shards.push(current);
    }
    shards
}

/// Writes a model's tensors (in their order) into `sink`: `model.safetensors`, or shards
/// and `model.safetensors.index.json` when they exceed `max_shard_bytes`. Returns the
/// files written.
pub fn write_model(tensors: &[(String, Tensor)], max_shard_bytes: u64, sink: &mut dyn FileSink) -> Result<Vec<String>> {
    let sizes: Vec<usize> = tensors.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).collect();
    let groups = shards(&sizes, max_shard_bytes);
    if groups.len() == 1 {
        sink.write_file(SINGLE, &mut |path| write_file(tensors, path))?;
        return Ok(vec![SINGLE.to_owned()]);
    }
    let count = groups.len();
    let mut written = Vec::with_capacity(count + 1);
    let mut weight_map = serde_json::Map::new();
    for (k, group) in groups.iter().enumerate() {
        let name = format!("model-{:05}-of-{count:05}.safetensors", k + 1);
        let shard: Vec<(String, Tensor)> =
            group.iter().map(|&i| (tensors[i].0.clone(), tensors[i].1.shallow_clone())).collect();
        sink.write_file(&name, &mut |path| write_file(&shard, path))?;
        for (tensor_name, _) in &shard {
            weight_map.insert(tensor_name.clone(), name.clone().into());
        }
        written.push(name);
    }
    let mut sorted: Vec<(String, serde_json::Value)> = weight_map.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let parameters: i64 = tensors.iter().map(|(_, t)| t.numel() as i64).sum();
    let index = serde_json::json!({
        "metadata": { "total_parameters": parameters, "total_size": sizes.iter().sum::<usize>() },
        "weight_map": serde_json::Map::from_iter(sorted),
    });
    let text = serde_json::to_string_pretty(&index)? + "\n";
    sink.write_file(INDEX, &mut |path| Ok(std::fs::write(path, &text)?))?;
    written.push(INDEX.to_owned());
    Ok(written)
}

/// Whether `name` is a weights file of a model folder (model.safetensors, its index or
/// a shard), which a newer save replaces.
pub fn is_weights_file(name: &str) -> bool {
    name == SINGLE
        || name == INDEX
        || (name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_huggingface_hub_reads_them() {
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("0.5 MB"), Ok(500_000));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("10kb"), Ok(10_000));
        for bad in ["", "GB", "5XB", "-1GB", "0", "nanGB", "é"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_fill_up_to_the_limit_and_a_large_tensor_stands_alone() {
        assert_eq!(shards(&[4, 4, 4], 100), vec![vec![0, 1, 2]]);
        assert_eq!(shards(&[4, 4, 4], 8), vec![vec![0, 1], vec![2]]);
        assert_eq!(shards(&[4, 20, 4], 8), vec![vec![1], vec![0, 2]]);
        assert_eq!(shards(&[], 8), vec![Vec::<usize>::new()]);
    }
}
