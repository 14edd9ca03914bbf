//! `weighted_ce`: class-weighted cross entropy, equal to PyTorch's
//! `F.cross_entropy(logits, labels, weight=w, ignore_index=-100, label_smoothing=s)`.
//!
//! Config (all optional):
//! - `weights`: one weight per class. Default: uniform, i.e. plain cross entropy.
//! - `label_smoothing`: in [0, 1). Default 0.
//! - `ignore_index`: labels with this value are ignored. Default -100.
//!
//! Reduction follows Hugging Face: in training the host passes `num_items_in_batch` (the
//! label items of the whole optimizer step) and the loss is the weighted sum divided by it,
//! so gradient accumulation is exact; without it (evaluation) the loss is PyTorch's
//! weighted mean (the weighted sum divided by the sum of the targets' weights).
//!
//! Labels given as class probabilities (a float tensor shaped as the logits, as mixup and
//! cutmix make) are soft targets, as in PyTorch: each row's loss is
//! -sum_c weight_c * p_c * log_softmax(logits)_c, and the evaluation mean divides by the
//! rows (PyTorch's rule for probability targets), not by a sum of weights.

use plugin_api::prelude::*;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// One weight per class (PyTorch CrossEntropyLoss weight); unset weighs every class 1.
    weights: Option<Vec<f64>>,
    /// Mixes the one-hot target with the uniform distribution by this amount (0 to 1).
    label_smoothing: f64,
    /// Label value whose items are left out of the loss.
    ignore_index: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self { weights: None, label_smoothing: 0.0, ignore_index: -100 }
    }
}

struct WeightedCe {
    weights: Option<Vec<f64>>,
    /// The weights as a tensor on the logits' device and dtype, made on first use.
    weight_tensor: Option<Tensor>,
    label_smoothing: f64,
    ignore_index: i64,
}

impl WeightedCe {
    fn new(config: Config) -> Result<Self, PluginError> {
        if !(0.0..1.0).contains(&config.label_smoothing) {
            return Err(PluginError::config(format!(
                "label_smoothing must be in [0, 1) (got {})",
                config.label_smoothing
            )));
        }
        if let Some(weights) = &config.weights {
            if weights.is_empty() || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
                return Err(PluginError::config("weights must be a non-empty list of finite numbers >= 0"));
            }
        }
        Ok(Self {
            weights: config.weights,
            weight_tensor: None,
            label_smoothing: config.label_smoothing,
            ignore_index: config.ignore_index,
        })
    }

    fn weight_for(&mut self, logits: &Tensor) -> Result<Option<&Tensor>, PluginError> {
        let Some(weights) = &self.weights else { return Ok(None) };
        let classes = *logits.size().last().unwrap_or(&0);
        if weights.len() as i64 != classes {
            return Err(PluginError::config(format!(
                "weights has {} entries but the model has {classes} classes",
                weights.len()
            )));
        }
        let stale =
            self.weight_tensor.as_ref().is_none_or(|t| t.device() != logits.device() || t.kind() != logits.kind());
        if stale {
            let t = Tensor::from_slice(weights).to_kind(logits.kind()).to_device(logits.device());
            self.weight_tensor = Some(t);
        }
        Ok(self.weight_tensor.as_ref())
    }
}

impl Loss for WeightedCe {
    fn compute_loss(
        &mut self,
        outputs: &Tensors,
        batch: &Tensors,
        num_items_in_batch: Option<i64>,
    ) -> Result<Tensor, PluginError> {
        let logits = outputs.require("logits")?;
        let labels = batch.require("labels")?;
        // Token models give logits [N, T, classes] for labels [N, T]: one item per position.
        let classes = *logits.size().last().unwrap_or(&0);
        // Class probabilities (mixup's or cutmix's labels, [N, classes]) are soft targets:
        // PyTorch's cross entropy with probabilities, one item per row.
        let soft = labels.is_floating_point() && labels.size() == logits.size();
        let (logits, labels) = if soft {
            (logits.reshape([-1, classes]), labels.reshape([-1, classes]).to_kind(logits.kind()))
        } else if logits.dim() > 2 {
            (logits.reshape([-1, classes]), labels.reshape([-1]))
        } else {
            (logits.shallow_clone(), labels.shallow_clone())
        };
        let (smoothing, ignore) = (self.label_smoothing, self.ignore_index);
        let weight = self.weight_for(&logits)?;
        let loss = match num_items_in_batch {
            Some(items) => {
                let sum = logits.f_cross_entropy_loss(&labels, weight, Reduction::Sum, ignore, smoothing)?;
                sum / items.max(1) as f64
            }
            None => logits.f_cross_entropy_loss(&labels, weight, Reduction::Mean, ignore, smoothing)?,
        };
        Ok(loss)
    }
}

export_plugin! {
    losses: { "weighted_ce" => WeightedCe::new },
}
