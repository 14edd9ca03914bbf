//! Helpers for losses that follow Hugging Face's `num_items_in_batch` convention: compute
//! a loss per label item (a row of the batch), then reduce.

use tch::{Kind, Tensor};

use crate::{PluginError, Tensors};

/// Reduces per-item losses (`[N]`, zero where `valid` is false): divided by
/// `num_items_in_batch` in training (the label items of the whole optimizer step, so that
/// accumulation is exact), by the number of valid items otherwise (the batch mean).
pub fn reduce(per_item: &Tensor, valid: &Tensor, num_items_in_batch: Option<i64>) -> Tensor {
    let sum = (per_item * valid.to_kind(per_item.kind())).sum(Kind::Float);
    match num_items_in_batch {
        Some(items) => sum / items.max(1) as f64,
        None => sum / valid.sum(Kind::Float).clamp_min(1.0),
    }
}

/// Float targets the shape of `logits` and the rows that count: the batch's `targets` if it
/// has them (every row counts), else its integer `labels` as one-hot rows (labels of -100
/// do not count).
pub fn float_targets(logits: &Tensor, batch: &Tensors) -> Result<(Tensor, Tensor), PluginError> {
    if let Some(targets) = batch.get("targets") {
        if targets.size() != logits.size() {
            return Err(PluginError::new(format!(
                "targets have shape {:?} but the logits {:?}",
                targets.size(),
                logits.size()
            )));
        }
        let rows = logits.size()[0];
        return Ok((targets.to_kind(logits.kind()), Tensor::ones([rows], (Kind::Bool, logits.device()))));
    }
    let labels = batch.require("labels")?;
    let valid = labels.ne(-100);
    let classes = *logits.size().last().unwrap_or(&0);
    let safe = labels.where_scalarother(&valid, 0);
    Ok((safe.one_hot(classes).to_kind(logits.kind()), valid))
}

/// Integer class labels and the rows that count (labels other than -100), with the labels
/// of the rows that do not count replaced by 0 so that they can index.
pub fn class_labels(batch: &Tensors) -> Result<(Tensor, Tensor), PluginError> {
    let labels = batch.require("labels")?;
    let valid = labels.ne(-100);
    Ok((labels.where_scalarother(&valid, 0), valid))
}
