//! A TorchScript module from PyTorch (`torch.jit.script` or `torch.jit.trace`, saved with
//! `.save()`), trained in place: its parameters join the host's variables under their
//! PyTorch names, so the optimizer, checkpoints and `model.safetensors` treat them like a
//! built-in model's, and PyTorch's `load_state_dict` reads the saved weights back.
//!
//! The module's `forward` receives the batch's `input` (features), or `input_ids` and,
//! when the data has it, `attention_mask`. It returns a tensor (the logits), a dict of
//! tensors with `logits` among them (all go to a loss plugin), or a tuple whose first
//! element is the logits.
//!
//! Buffers (such as BatchNorm running statistics) are used but not saved in checkpoints:
//! modules with buffers train, but resume and the saved weights hold parameters only.

use std::cell::{Cell, RefCell};
use std::path::Path;

use anyhow::Result;
use tch::jit::{CModule, IValue};
use tch::{nn, Tensor};

use super::{Model, Outputs};
use crate::engine::data::Batch;
use crate::error::{first_line, InputError};

pub struct TorchScript {
    module: RefCell<CModule>,
    /// Whether the module is in training mode (switched only when it changes).
    training: Cell<Option<bool>>,
    file: String,
    /// The dotted names of its `nn.LayerNorm` submodules, which HF leaves out of weight
    /// decay by type.
    layer_norms: Vec<String>,
}

impl TorchScript {
    pub fn load(file: &Path, root: &nn::Path) -> Result<Self> {
        let shown = file.display().to_string();
        if !file.is_file() {
            return Err(
                InputError::new(format!("TorchScript file {shown} does not exist (model = torchscript:FILE)")).into()
            );
        }
        let module = CModule::load_on_device(file, root.device()).map_err(|e| {
            InputError::new(format!(
                "{shown} is not a TorchScript module ({}); save one with torch.jit.script(model).save(path)",
                first_line(&e.to_string())
            ))
        })?;
        let parameters = module.named_parameters().map_err(|e| InputError::new(format!("{shown}: {e}")))?;
        if parameters.is_empty() {
            return Err(InputError::new(format!("{shown}: the module has no parameters to train")).into());
        }
        for (name, tensor) in parameters {
            // VarStore paths are dotted, as PyTorch's names: `encoder.0.weight` becomes the
            // path encoder / 0 and the variable weight, and is named back the same.
            let mut parts: Vec<&str> = name.split('.').collect();
            let leaf = parts.pop().unwrap_or_default();
            let path = parts.iter().fold(root.clone(), |path, part| &path / *part);
            let trainable = tensor.requires_grad();
            let _ = path.add(leaf, tensor, trainable);
        }
        let layer_norms = crate::native::torchscript_layer_norms(file)
            .map_err(|e| InputError::new(format!("{shown}: reading its module types: {e}")))?;
        Ok(Self { module: RefCell::new(module), training: Cell::new(None), file: shown, layer_norms })
    }
}

impl Model for TorchScript {
    fn decays(&self, name: &str) -> bool {
        // HF's get_decay_parameter_names: not the parameters of a LayerNorm (by type), nor
        // biases and norm weights (by name).
        let owner = name.rsplit_once('.').map_or("", |(owner, _)| owner);
        crate::engine::optim::decays(name) && !self.layer_norms.iter().any(|norm| norm == owner)
    }

    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        if self.training.get() != Some(train) {
            let mut module = self.module.borrow_mut();
            if train {
                module.set_train()
            } else {
                module.set_eval()
            }
            self.training.set(Some(train));
        }
        let inputs: Vec<IValue> = match batch.get("input") {
            Some(input) => vec![IValue::Tensor(input.shallow_clone())],
            None => {
                let mut inputs = vec![IValue::Tensor(batch.require("input_ids", "torchscript")?.shallow_clone())];
                if let Some(mask) = batch.get("attention_mask") {
                    inputs.push(IValue::Tensor(mask.shallow_clone()));
                }
                inputs
            }
        };
        let output =
            self.module.borrow().forward_is(&inputs).map_err(|e| {
                InputError::new(format!("{}: forward failed: {}", self.file, first_line(&e.to_string())))
            })?;
        outputs(output).map_err(|why| InputError::new(format!("{}: forward returned {why}", self.file)).into())
    }
}

/// Reads the module's output: a tensor, a dict with `logits`, or a tuple starting with it.
fn outputs(output: IValue) -> Result<Outputs, String> {
    match output {
        IValue::Tensor(logits) => Ok(Outputs::logits(logits)),
        IValue::Tuple(items) | IValue::GenericList(items) => match items.into_iter().next() {
            Some(IValue::Tensor(logits)) => Ok(Outputs::logits(logits)),
            _ => Err("a tuple whose first element is not a tensor".to_owned()),
        },
        IValue::GenericDict(entries) => {
            let mut fields: Vec<(String, Tensor)> = Vec::new();
            for (key, value) in entries {
                if let (IValue::String(name), IValue::Tensor(tensor)) = (key, value) {
                    fields.push((name, tensor));
                }
            }
            let Some(at) = fields.iter().position(|(n, _)| n == "logits") else {
                return Err("a dict without a 'logits' tensor".to_owned());
            };
            let logits = fields.remove(at);
            fields.insert(0, logits);
            Ok(Outputs { fields, head_input: None })
        }
        _ => Err("a value that is not a tensor, a dict with 'logits' or a tuple".to_owned()),
    }
}
