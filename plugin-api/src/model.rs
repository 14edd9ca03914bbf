//! The model interface: an architecture written in Rust with tch, trained by the host as
//! its own models are (optimizer, precision, checkpoints, distribution). Since
//! plugin-api 1.6.
//!
//! The model is functional, as `torch.func.functional_call`: it declares its parameters
//! and buffers once, with their initial values; the host keeps them (in its parameter
//! store, on its device, in its checkpoints) and hands them back by name at every forward
//! pass, so gradients reach the host's tensors.

use crate::{PluginError, Tensors};

/// What the model is built for: the data's fields and classes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelInputs {
    /// Each batch field's shape for one example (`input` of the digits: `[64]`).
    pub fields: Vec<(String, Vec<i64>)>,
    /// A classifier's classes (num_labels, else the largest label + 1); `None` when the
    /// labels are not class ids.
    pub num_labels: Option<i64>,
}

impl ModelInputs {
    /// The per-example shape of field `name`.
    pub fn shape(&self, name: &str) -> Result<&[i64], PluginError> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_slice()).ok_or_else(|| {
            let names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
            PluginError::config(format!("the data has no field '{name}' (fields: {})", names.join(", ")))
        })
    }
}

/// A model's weights with their initial values: parameters (trained) and buffers (saved
/// and restored, not trained: batch norm's running statistics). Names are dotted paths
/// as in PyTorch (`layer1.0.conv1.weight`).
#[derive(Debug, Default)]
pub struct ModelWeights {
    pub parameters: Tensors,
    pub buffers: Tensors,
}

/// A model architecture.
pub trait Model: 'static {
    /// The weights for data shaped as `inputs`, initialised (draw from libtorch's
    /// generator, which the host seeds from `seed`, so initialisation repeats).
    fn init(&mut self, inputs: &ModelInputs) -> Result<ModelWeights, PluginError>;

    /// The forward pass: `weights` are the host's parameters and buffers by the names
    /// [`Model::init`] gave (update buffers in place, under `tch::no_grad`); `batch` is the
    /// batch's fields; `train` is true in training (dropout, batch statistics). Returns the
    /// outputs by name, `logits` among them.
    fn forward(&mut self, weights: &Tensors, batch: &Tensors, train: bool) -> Result<Tensors, PluginError>;
}
