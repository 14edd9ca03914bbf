//! The loss interface.

use tch::Tensor;

use crate::{PluginError, Tensors};

/// A training loss, as Hugging Face's `compute_loss_func`.
pub trait Loss: 'static {
    /// Returns the scalar loss for one micro-batch; the host backpropagates through it.
    ///
    /// - `outputs`: the model's outputs by name (`logits`, ...).
    /// - `batch`: the batch by name (`input`, `labels`, ...). Labels of -100 are ignored.
    /// - `num_items_in_batch`: in training, the number of label items (labels other than
    ///   -100) in the whole optimizer step, across all accumulated micro-batches. Divide a
    ///   summed loss by it, and accumulated gradients equal those of one big batch.
    ///   `None` in evaluation: return the batch mean.
    fn compute_loss(
        &mut self,
        outputs: &Tensors,
        batch: &Tensors,
        num_items_in_batch: Option<i64>,
    ) -> Result<Tensor, PluginError>;

    /// The loss's own state (counters, running statistics), saved in checkpoints; `None`,
    /// the default, for a stateless loss. Since plugin-api 1.1.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Restores a state that [`Loss::state`] returned. Since plugin-api 1.1.
    #[allow(unused_variables)]
    fn load_state(&mut self, state: serde_json::Value) -> Result<(), PluginError> {
        Ok(())
    }
}
