//! Metric components from plugins (Hugging Face's `compute_metrics` with
//! `batch_eval_metrics`): updated per evaluation batch, computed at the end.

use anyhow::Result;
use plugin_api::ffi::ExtensionOp;
use plugin_api::Tensors;

use super::component::PluginComponent;

pub struct PluginMetric(pub(super) PluginComponent);

/// What a metric reports: named values, and a report of any shape to write as JSON.
pub struct MetricReport {
    pub values: Vec<(String, f64)>,
    pub report: Option<serde_json::Value>,
}

impl PluginMetric {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn reset(&mut self) -> Result<()> {
        self.0.call(ExtensionOp::METRIC_RESET, "reset", "{}", &Tensors::new())?;
        Ok(())
    }

    /// One evaluation batch: the model's outputs and the batch's fields.
    pub fn update(&mut self, outputs: &Tensors, batch: &Tensors) -> Result<()> {
        let mut tensors = Tensors::new();
        for (name, tensor) in outputs.iter() {
            tensors.insert(format!("outputs.{name}"), tensor.shallow_clone());
        }
        for (name, tensor) in batch.iter() {
            tensors.insert(format!("batch.{name}"), tensor.shallow_clone());
        }
        self.0.call(ExtensionOp::METRIC_UPDATE, "update", "{}", &tensors)?;
        Ok(())
    }

    /// The running totals to sum across ranks (none: each rank reports its own share).
    pub fn totals(&mut self) -> Result<Tensors> {
        Ok(self.0.call(ExtensionOp::METRIC_TOTALS, "totals", "{}", &Tensors::new())?.1)
    }

    pub fn set_totals(&mut self, totals: &Tensors) -> Result<()> {
        self.0.call(ExtensionOp::METRIC_SET_TOTALS, "set_totals", "{}", totals)?;
        Ok(())
    }

    pub fn compute(&mut self) -> Result<MetricReport> {
        let (answer, _) = self.0.call_json(ExtensionOp::METRIC_COMPUTE, "compute", "{}", &Tensors::new())?;
        // JSON has no NaN: an undefined value (no examples) arrives as null.
        let values = answer["values"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NAN))).collect())
            .unwrap_or_default();
        let report = Some(answer["report"].clone()).filter(|r| !r.is_null());
        Ok(MetricReport { values, report })
    }
}
