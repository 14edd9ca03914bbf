//! `huber` and `smooth_l1`: robust regression losses between the logits and the targets
//! (the batch's float `targets`, or its class `labels` as one-hot rows), equal to PyTorch's
//! `F.huber_loss(delta)` and `F.smooth_l1_loss(beta)`. Config: `delta` / `beta` (default 1).

use plugin_api::items::{float_targets, reduce};
use plugin_api::prelude::*;

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct HuberConfig {
    /// Where the loss turns from quadratic to linear (PyTorch HuberLoss delta).
    delta: f64,
}

impl Default for HuberConfig {
    fn default() -> Self {
        Self { delta: 1.0 }
    }
}

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct SmoothL1Config {
    /// Where the loss turns from quadratic to linear (PyTorch SmoothL1Loss beta).
    beta: f64,
}

impl Default for SmoothL1Config {
    fn default() -> Self {
        Self { beta: 1.0 }
    }
}

enum Robust {
    Huber(f64),
    SmoothL1(f64),
}

impl Loss for Robust {
    fn compute_loss(&mut self, outputs: &Tensors, batch: &Tensors, items: Option<i64>) -> Result<Tensor, PluginError> {
        let logits = outputs.require("logits")?;
        let (targets, valid) = float_targets(logits, batch)?;
        let elementwise = match self {
            Self::Huber(delta) => logits.f_huber_loss(&targets, Reduction::None, *delta)?,
            Self::SmoothL1(beta) => logits.f_smooth_l1_loss(&targets, Reduction::None, *beta)?,
        };
        Ok(reduce(&elementwise.mean_dim(-1, false, Kind::Float), &valid, items))
    }
}

fn positive(name: &str, value: f64) -> Result<f64, PluginError> {
    if value > 0.0 && value.is_finite() {
        Ok(value)
    } else {
        Err(PluginError::config(format!("{name} must be > 0 (got {value})")))
    }
}

export_plugin! {
    losses: {
        "huber" => |c: HuberConfig| Ok(Robust::Huber(positive("delta", c.delta)?)),
        "smooth_l1" => |c: SmoothL1Config| Ok(Robust::SmoothL1(positive("beta", c.beta)?)),
    },
}
