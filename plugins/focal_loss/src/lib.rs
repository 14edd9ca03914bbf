//! `focal_loss`: multi-class focal loss (Lin et al., 2017),
//! `-alpha[y] * (1 - p_y)^gamma * log p_y` per label item, labels of -100 ignored.
//!
//! Config: `gamma` (default 2), `alpha` (one weight per class, default none = 1).

use plugin_api::items::{class_labels, reduce};
use plugin_api::prelude::*;

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Focusing parameter: how much easy (well-classified) items are down-weighted; 0 gives cross entropy.
    gamma: f64,
    /// One weight per class (alpha_t in the paper); unset weighs every class 1.
    alpha: Option<Vec<f64>>,
}

impl Default for Config {
    fn default() -> Self {
        Self { gamma: 2.0, alpha: None }
    }
}

struct Focal {
    gamma: f64,
    alpha: Option<Vec<f64>>,
}

impl Focal {
    fn new(config: Config) -> Result<Self, PluginError> {
        if config.gamma.is_nan() || config.gamma < 0.0 {
            return Err(PluginError::config(format!("gamma must be >= 0 (got {})", config.gamma)));
        }
        Ok(Self { gamma: config.gamma, alpha: config.alpha })
    }
}

impl Loss for Focal {
    fn compute_loss(&mut self, outputs: &Tensors, batch: &Tensors, items: Option<i64>) -> Result<Tensor, PluginError> {
        let (logits, (labels, valid)) = (outputs.require("logits")?, class_labels(batch)?);
        // Token models give logits [N, T, classes] for labels [N, T]: one item per position.
        let classes = *logits.size().last().unwrap_or(&0);
        let (logits, labels, valid) = if logits.dim() > 2 {
            (logits.reshape([-1, classes]), labels.reshape([-1]), valid.reshape([-1]))
        } else {
            (logits.shallow_clone(), labels, valid)
        };
        let log_p = logits.log_softmax(-1, Kind::Float).gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
        let p = log_p.exp();
        let modulating = (p.ones_like() - &p).pow_tensor_scalar(self.gamma);
        let mut per_item = -(modulating * &log_p);
        if let Some(alpha) = &self.alpha {
            if alpha.len() as i64 != classes {
                return Err(PluginError::config(format!(
                    "alpha has {} entries but the model has {classes} classes",
                    alpha.len()
                )));
            }
            let alpha = Tensor::from_slice(alpha).to_kind(Kind::Float).to_device(logits.device());
            per_item *= alpha.index_select(0, &labels);
        }
        Ok(reduce(&per_item, &valid, items))
    }
}

export_plugin! {
    losses: { "focal_loss" => Focal::new },
}
