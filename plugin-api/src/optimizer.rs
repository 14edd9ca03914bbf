//! The optimizer interface (Hugging Face's `create_optimizer`). Since plugin-api 1.6.

use tch::Tensor;

use crate::{PluginError, Tensors};

/// A trainable parameter as the optimizer sees it at a step.
pub struct Parameter<'a> {
    /// Its name in the model (`layers.0.weight`), the same at every step and across a
    /// resume: key the optimizer's state by it.
    pub name: &'a str,
    /// The parameter; `tensor.grad()` is its gradient (undefined when the backward pass
    /// did not reach it). Update it in place under `tch::no_grad`.
    pub tensor: &'a Tensor,
    /// Hugging Face's parameter groups: `weight_decay` for most, 0 for biases and norm
    /// weights.
    pub weight_decay: f64,
}

/// An optimizer.
pub trait Optimizer: 'static {
    /// One update with learning rate `lr` (the scheduler's) from the gradients, which the
    /// host has unscaled, clipped and (in a distributed run) averaged. The host zeroes the
    /// gradients afterwards. `parameters` is the same list, in the same order, at every
    /// step.
    fn step(&mut self, parameters: &[Parameter<'_>], lr: f64) -> Result<(), PluginError>;

    /// The optimizer's state for a checkpoint: counters as JSON and tensors (moments,
    /// buffers) by name, which the host writes to the checkpoint's optimizer file.
    fn state(&self) -> (serde_json::Value, Tensors);

    /// Restores a state that [`Optimizer::state`] returned, for an exact resume. The
    /// tensors are on the device of the parameters.
    fn load_state(&mut self, state: serde_json::Value, tensors: Tensors) -> Result<(), PluginError>;
}
