//! `kl_div`: knowledge distillation. The student's logits are pulled toward the teacher's
//! (`teacher_logits` in the batch) with the KL divergence of their softened distributions,
//! as PyTorch's `F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T^2`;
//! with `alpha` < 1 it is mixed with cross entropy on the `labels`.
//!
//! Config: `temperature` (default 1), `alpha` (weight of the distillation term, default 1).

use plugin_api::items::{class_labels, reduce};
use plugin_api::prelude::*;

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Softens student and teacher distributions; the KL term is scaled by temperature^2.
    temperature: f64,
    /// Weight of the distillation term; the cross entropy on the labels gets 1 - alpha.
    alpha: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { temperature: 1.0, alpha: 1.0 }
    }
}

struct KlDiv {
    temperature: f64,
    alpha: f64,
}

impl KlDiv {
    fn new(config: Config) -> Result<Self, PluginError> {
        if config.temperature.is_nan() || config.temperature <= 0.0 {
            return Err(PluginError::config(format!("temperature must be > 0 (got {})", config.temperature)));
        }
        if !(0.0..=1.0).contains(&config.alpha) {
            return Err(PluginError::config(format!("alpha must be in [0, 1] (got {})", config.alpha)));
        }
        Ok(Self { temperature: config.temperature, alpha: config.alpha })
    }
}

impl Loss for KlDiv {
    fn compute_loss(&mut self, outputs: &Tensors, batch: &Tensors, items: Option<i64>) -> Result<Tensor, PluginError> {
        let student = outputs.require("logits")?;
        let teacher = batch.require("teacher_logits")?;
        let t = self.temperature;
        let log_p = (student / t).log_softmax(-1, Kind::Float);
        let log_q = (teacher / t).log_softmax(-1, Kind::Float);
        // KL(q || p) per row: sum over classes of q (log q - log p).
        let per_item = (log_q.exp() * (&log_q - &log_p)).sum_dim_intlist(-1, false, Kind::Float) * (t * t);
        let rows = Tensor::ones([student.size()[0]], (Kind::Bool, student.device()));
        let distill = reduce(&per_item, &rows, items);
        if self.alpha >= 1.0 {
            return Ok(distill);
        }
        let (labels, valid) = class_labels(batch)?;
        let ce = student.cross_entropy_loss::<Tensor>(&labels, None, Reduction::None, -100, 0.0);
        let hard = reduce(&ce, &valid, items);
        Ok(distill * self.alpha + hard * (1.0 - self.alpha))
    }
}

export_plugin! {
    losses: { "kl_div" => KlDiv::new },
}
