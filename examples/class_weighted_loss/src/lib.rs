//! A user's own loss plugin: cross entropy where each class counts with its own weight.
//!
//! Written with plain tensor ops (log-softmax, gather) to show that autograd flows through
//! a plugin's code: the host backpropagates through whatever the loss computes.
//!
//! Build it with `cargo build --release` and load it into an already-built host:
//!     host --plugin target/release/libclass_weighted_loss.so
//!
//! Config: `class_weights`, the weights of classes 0, 1, 2, ...; classes past the end of
//! the list weigh 1. Default `[1, 2, 3]`.

use plugin_api::prelude::*;

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Weights of classes 0, 1, 2, ...; classes past the end of the list weigh 1.
    class_weights: Vec<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Self { class_weights: vec![1.0, 2.0, 3.0] }
    }
}

struct ClassWeightedLoss {
    class_weights: Vec<f64>,
}

impl ClassWeightedLoss {
    fn new(config: Config) -> Result<Self, PluginError> {
        if config.class_weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(PluginError::config("class_weights must be finite numbers >= 0"));
        }
        Ok(Self { class_weights: config.class_weights })
    }

    /// One weight per class of `logits`, on its device.
    fn weights(&self, logits: &Tensor) -> Tensor {
        let classes = *logits.size().last().unwrap_or(&0) as usize;
        let weights: Vec<f32> =
            (0..classes).map(|c| self.class_weights.get(c).copied().unwrap_or(1.0) as f32).collect();
        Tensor::from_slice(&weights).to_device(logits.device())
    }
}

impl Loss for ClassWeightedLoss {
    fn compute_loss(
        &mut self,
        outputs: &Tensors,
        batch: &Tensors,
        num_items_in_batch: Option<i64>,
    ) -> Result<Tensor, PluginError> {
        let logits = outputs.require("logits")?;
        let labels = batch.require("labels")?;
        let valid = labels.ne(-100);
        let safe_labels = labels.where_scalarother(&valid, 0);
        let log_probs = logits.log_softmax(-1, Kind::Float);
        let picked = log_probs.gather(1, &safe_labels.unsqueeze(1), false).squeeze_dim(1);
        let weights = self.weights(logits).index_select(0, &safe_labels) * valid.to_kind(Kind::Float);
        let weighted_sum = -(picked * &weights).sum(Kind::Float);
        // Training: per label item of the whole optimizer step (exact under gradient
        // accumulation). Evaluation: the weighted mean.
        let loss = match num_items_in_batch {
            Some(items) => weighted_sum / items.max(1) as f64,
            None => weighted_sum / weights.sum(Kind::Float).clamp_min(f64::MIN_POSITIVE),
        };
        Ok(loss)
    }
}

export_plugin! {
    losses: { "class_weighted" => ClassWeightedLoss::new },
}
