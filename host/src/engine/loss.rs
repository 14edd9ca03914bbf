//! The run's loss, one owner for training and evaluation: the built-in cross entropy or a
//! plugin's, behind one trait the engine defines (the plugin adapter implements it in
//! `plugins`). A model's outputs are its logits, or, where the loss takes them and the
//! model can give them, a language model's last hidden states with its head, so the
//! built-in loss never materializes the full logits (`ops::cross_entropy`).

use anyhow::Result;
use tch::{Kind, Reduction, Tensor};

use crate::engine::data::Batch;
use crate::engine::models::Outputs;
use crate::engine::ops::cross_entropy::{linear_cross_entropy, LossSettings};
use crate::error::InputError;

/// A loss over a model's outputs and the batch.
pub trait Loss {
    /// One micro-batch's loss. In training, `num_items` is the label items of the whole
    /// optimizer step (HF's `num_items_in_batch`): the sum over the batch's items divided
    /// by it, so that accumulated gradients are one big batch's. In evaluation it is
    /// `None`: the mean over the batch's label items.
    fn compute(&mut self, outputs: &Outputs, batch: &Batch, num_items: Option<i64>, training: bool) -> Result<Tensor>;

    /// Whether the loss takes a language model's hidden states and head in place of its
    /// logits.
    fn takes_hidden_states(&self) -> bool {
        false
    }

    /// The state a checkpoint keeps (a stateful plugin's); `None` without one.
    fn state(&mut self) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }

    /// Restores a state that [`state`](Self::state) returned.
    fn load_state(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// The built-in loss: cross entropy over label items (-100 ignored), HF's LabelSmoother
/// with `smoothing` > 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy {
    pub smoothing: f64,
}

impl Loss for CrossEntropy {
    fn compute(&mut self, outputs: &Outputs, batch: &Batch, num_items: Option<i64>, _: bool) -> Result<Tensor> {
        let labels = batch.labels();
        if let Some(head) = &outputs.head_input {
            // The language model's loss without its logits; the mean in evaluation.
            let items = num_items.unwrap_or_else(|| crate::engine::data::count_label_items(labels));
            let settings = LossSettings { smoothing: self.smoothing, soft_cap: head.soft_cap };
            return Ok(linear_cross_entropy(&head.hidden, &head.weight, head.bias.as_ref(), labels, items, settings));
        }
        let logits = outputs.get_logits();
        match num_items {
            Some(items) => Ok(cross_entropy(logits, labels, Reduction::Sum, self.smoothing)? / items.max(1) as f64),
            None => cross_entropy(logits, labels, Reduction::Mean, self.smoothing),
        }
    }

    fn takes_hidden_states(&self) -> bool {
        true
    }
}

/// Cross entropy over label items of any shape: logits [..., classes], labels [...]. Labels
/// that do not fit the logits (a TorchScript model with fewer outputs than classes) are the
/// user's data not fitting the model: an error, not a crash.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, reduction: Reduction, smoothing: f64) -> Result<Tensor> {
    let classes = *logits.size().last().unwrap_or(&0);
    // Token logits (a language model's [B, T, vocab]) in bf16 or fp16 are upcast first, as
    // transformers' ForCausalLMLoss does: a vocabulary-wide logsumexp in bf16 is off by
    // about 1e-2 relative.
    let upcast;
    let logits = if logits.dim() > 2 && matches!(logits.kind(), Kind::BFloat16 | Kind::Half) {
        upcast = logits.to_kind(Kind::Float);
        &upcast
    } else {
        logits
    };
    if labels.is_floating_point() && labels.size() == logits.size() {
        // Class probabilities (a batch transform's mixed labels): PyTorch's soft-target
        // cross entropy, one item per row.
        let probabilities = labels.reshape([-1, classes]).to_kind(logits.kind());
        return Ok(logits.reshape([-1, classes]).f_cross_entropy_loss::<Tensor>(
            &probabilities,
            None,
            reduction,
            -100,
            smoothing,
        )?);
    }
    logits
        .reshape([-1, classes])
        .f_cross_entropy_loss::<Tensor>(&labels.reshape([-1]), None, reduction, -100, smoothing)
        .map_err(|e| {
            InputError::new(format!(
                "the labels do not fit the model's logits {:?} (labels {:?}, largest {}): {}",
                logits.size(),
                labels.size(),
                labels.max().int64_value(&[]),
                crate::error::first_line(&e.to_string())
            ))
            .into()
        })
}
