//! `bce_with_logits`: binary cross entropy on logits, for multi-label targets (the batch's
//! float `targets` in [0, 1], or its class `labels` as one-hot rows). Equal to PyTorch's
//! `F.binary_cross_entropy_with_logits(pos_weight=...)`. Config: `pos_weight`, one weight
//! per label for positive examples (default: none).

use plugin_api::items::{float_targets, reduce};
use plugin_api::prelude::*;

#[derive(Deserialize, JsonSchema, Default)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Weight of the positive term, one per label (PyTorch pos_weight); unset weighs every label 1.
    pos_weight: Option<Vec<f64>>,
}

struct Bce {
    pos_weight: Option<Vec<f64>>,
}

impl Loss for Bce {
    fn compute_loss(&mut self, outputs: &Tensors, batch: &Tensors, items: Option<i64>) -> Result<Tensor, PluginError> {
        let logits = outputs.require("logits")?;
        let (targets, valid) = float_targets(logits, batch)?;
        let pos_weight = match &self.pos_weight {
            None => None,
            Some(weights) => {
                let labels = *logits.size().last().unwrap_or(&0);
                if weights.len() as i64 != labels {
                    return Err(PluginError::config(format!(
                        "pos_weight has {} entries but the model has {labels} outputs",
                        weights.len()
                    )));
                }
                Some(Tensor::from_slice(weights).to_kind(logits.kind()).to_device(logits.device()))
            }
        };
        let elementwise = logits.f_binary_cross_entropy_with_logits::<&Tensor>(
            &targets,
            None,
            pos_weight.as_ref(),
            Reduction::None,
        )?;
        Ok(reduce(&elementwise.mean_dim(-1, false, Kind::Float), &valid, items))
    }
}

export_plugin! {
    losses: { "bce_with_logits" => |c: Config| Ok(Bce { pos_weight: c.pos_weight }) },
}
