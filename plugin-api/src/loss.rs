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

    /// Whether the loss takes a causal language model's last hidden states and head in
    /// place of its logits, so that it need not hold the full [batch, time, vocabulary]
    /// logits: `outputs` then has `hidden_states` [B, T, width], `lm_head.weight`
    /// [vocabulary, width], `lm_head.bias` where the head has one and `logit_soft_cap` (a
    /// scalar) where the model caps its logits (logits = cap * tanh(head(hidden) / cap));
    /// labels are aligned with the positions as for logits. [`crate::ops::linear_cross_entropy`]
    /// computes the cross entropy over them a chunk at a time, as the host's built-in loss
    /// does. This is for training steps: evaluation (whose metrics and predictions need
    /// them) and models without such a head (classifiers, TorchScript) give `logits`.
    /// `false`, the default, for a loss over logits. Since plugin-api 1.7.
    fn takes_hidden_states(&self) -> bool {
        false
    }

    /// Restores a state that [`Loss::state`] returned. Since plugin-api 1.1.
    #[allow(unused_variables)]
    fn load_state(&mut self, state: serde_json::Value) -> Result<(), PluginError> {
        Ok(())
    }
}
