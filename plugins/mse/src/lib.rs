//! `mse`: mean squared error between the logits and the targets (the batch's float
//! `targets`, or its class `labels` as one-hot rows). Equal to PyTorch's `F.mse_loss`.
//! Per label item (row) in training, as Hugging Face's `num_items_in_batch`. No config.

use plugin_api::items::{float_targets, reduce};
use plugin_api::prelude::*;

struct Mse;

impl Loss for Mse {
    fn compute_loss(&mut self, outputs: &Tensors, batch: &Tensors, items: Option<i64>) -> Result<Tensor, PluginError> {
        let logits = outputs.require("logits")?;
        let (targets, valid) = float_targets(logits, batch)?;
        let per_item = logits.f_mse_loss(&targets, Reduction::None)?.mean_dim(-1, false, Kind::Float);
        Ok(reduce(&per_item, &valid, items))
    }
}

export_plugin! {
    losses: { "mse" => |_: NoConfig| Ok(Mse) },
}
