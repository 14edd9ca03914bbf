//! Model weights on disk: safetensors files as Hugging Face writes them (one file or
//! shards with an index, `{"format": "pt"}` metadata), loadable as they are by Python's
//! `safetensors.torch.load_file`, by PyTorch modules with the same parameter names, and by
//! transformers' `from_pretrained`.

pub mod files;
pub mod write;

use std::path::{Path, PathBuf};

use anyhow::Result;
use tch::{nn, Tensor};

use crate::error::InputError;
pub use files::WeightFiles;
pub use write::{is_weights_file, write_model, FileSink};

/// Opens `path`: a safetensors file, or a folder with model.safetensors or a sharded
/// index. `what` names the argument in errors.
pub fn open(path: &Path, what: &str) -> Result<WeightFiles, InputError> {
    let shown = path.display();
    if path.is_dir() {
        return WeightFiles::open_folder(path, what);
    }
    if !path.is_file() {
        return Err(InputError::new(format!("{what}: {shown} {}", crate::error::what_is_at(path))));
    }
    WeightFiles::open(&[path.to_path_buf()]).map_err(|e| InputError::new(format!("{what}: {e}")))
}

/// Copies the tensors of `path` (a file, or a model folder) into the model's variables.
/// Every variable must be there with its shape, and nothing else: otherwise one error
/// lists what is missing, unexpected or mis-shaped.
pub fn load_into(vars: &nn::VarStore, path: &Path, what: &str) -> Result<()> {
    let weights = open(path, what)?;
    let variables = vars.variables();
    let mut missing: Vec<&str> = Vec::new();
    let mut misshaped: Vec<String> = Vec::new();
    for (name, var) in &variables {
        match weights.shape(name) {
            None => missing.push(name),
            Some(shape) if shape != var.size() => {
                misshaped.push(format!("{name} is {shape:?}, the model has {:?}", var.size()))
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<&str> = weights.names().filter(|name| !variables.contains_key(*name)).collect();
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
        missing.sort_unstable();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!("missing: {}", missing.join(", ")));
        }
        if !unexpected.is_empty() {
            problems.push(format!("unexpected: {}", unexpected.join(", ")));
        }
        if !misshaped.is_empty() {
            misshaped.sort();
            problems.push(format!("wrong shape: {}", misshaped.join("; ")));
        }
        let shown = path.display();
        return Err(InputError::new(format!("{what}: {shown} does not fit the model ({})", problems.join("; "))).into());
    }
    for (name, var) in &variables {
        weights.read_into(name, var).map_err(|e| InputError::new(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// The model's variables, sorted by name: what a weights file holds.
pub fn named_tensors(vars: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Writes the model's variables to `path`, one safetensors file.
pub fn save(vars: &nn::VarStore, path: &Path) -> Result<()> {
    write::write_file(&named_tensors(vars), path)
}

/// output_dir as a place for model files: each written atomically, and the weights of an
/// earlier save in another layout (one file against shards) removed, so that what
/// transformers loads is this save.
pub struct AtomicFolder {
    pub dir: PathBuf,
}

impl FileSink for AtomicFolder {
    fn write_file(&mut self, name: &str, write: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
        crate::engine::output::write_atomically(&self.dir.join(name), |temporary| write(temporary))
    }
}

impl AtomicFolder {
    /// Removes weights files of an earlier save that `written` did not replace.
    pub fn remove_stale_weights(&self, written: &[String]) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(()) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_weights_file(&name) && !written.contains(&name) {
                std::fs::remove_file(entry.path())
                    .map_err(|e| anyhow::anyhow!("cannot remove the stale {}: {e}", entry.path().display()))?;
            }
        }
        Ok(())
    }
}
