//! Model weights on disk: safetensors files, loadable as they are by Python's
//! `safetensors.torch.load_file` and by PyTorch modules with the same parameter names.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use tch::{nn, Tensor};

use crate::error::InputError;

/// Copies the tensors of `path` into the model's variables. Every variable must be there
/// with its shape, and nothing else: otherwise one error lists what is missing,
/// unexpected or mis-shaped.
pub fn load_into(vars: &nn::VarStore, path: &Path) -> Result<()> {
    let shown = path.display();
    if !path.is_file() {
        return Err(InputError::new(format!("init_weights: {shown} does not exist")).into());
    }
    let loaded: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| InputError::new(format!("init_weights: {shown} is not a readable safetensors file ({e})")))?
        .into_iter()
        .collect();
    let variables = vars.variables();
    let mut missing: Vec<&str> = Vec::new();
    let mut misshaped: Vec<String> = Vec::new();
    for (name, var) in &variables {
        match loaded.get(name) {
            None => missing.push(name),
            Some(t) if t.size() != var.size() => {
                misshaped.push(format!("{name} is {:?}, the model has {:?}", t.size(), var.size()))
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<&str> =
        loaded.keys().filter(|name| !variables.contains_key(*name)).map(String::as_str).collect();
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
        return Err(
            InputError::new(format!("init_weights: {shown} does not fit the model ({})", problems.join("; "))).into()
        );
    }
    tch::no_grad(|| {
        for (name, mut var) in variables {
            let source = &loaded[&name];
            var.copy_(&source.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(())
}

/// Writes the model's variables to `path` (safetensors), sorted by name.
pub fn save(vars: &nn::VarStore, path: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let on_cpu: Vec<(String, Tensor)> = named.into_iter().map(|(n, t)| (n, t.to_device(tch::Device::Cpu))).collect();
    Tensor::write_safetensors(&on_cpu, path).with_context(|| format!("cannot write {}", path.display()))
}
