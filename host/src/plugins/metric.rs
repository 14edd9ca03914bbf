//! Metric components from plugins (Hugging Face's `compute_metrics` with
//! `batch_eval_metrics`): updated per evaluation batch, computed at the end.

use anyhow::Result;
use plugin_api::ffi::ExtensionOp;
use plugin_api::Tensors;
use tch::Tensor;

use super::component::PluginComponent;
use crate::engine::data::Batch;
use crate::engine::metric::{Metric, MetricResults};
use crate::engine::models::Outputs;

pub struct PluginMetric(pub(super) PluginComponent);

impl Metric for PluginMetric {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn reset(&mut self) -> Result<()> {
        self.0.call(ExtensionOp::METRIC_RESET, "reset", "{}", &Tensors::new())?;
        Ok(())
    }

    /// The plugin sees `outputs.NAME` and `batch.NAME` tensors.
    fn update(&mut self, outputs: &Outputs, batch: &Batch) -> Result<()> {
        let mut tensors = Tensors::new();
        for (name, tensor) in outputs.to_plugin().iter() {
            tensors.insert(format!("outputs.{name}"), tensor.shallow_clone());
        }
        for (name, tensor) in batch.to_plugin().iter() {
            tensors.insert(format!("batch.{name}"), tensor.shallow_clone());
        }
        self.0.call(ExtensionOp::METRIC_UPDATE, "update", "{}", &tensors)?;
        Ok(())
    }

    fn totals(&mut self) -> Result<Vec<(String, Tensor)>> {
        let totals = self.0.call(ExtensionOp::METRIC_TOTALS, "totals", "{}", &Tensors::new())?.1;
        Ok(totals.iter().map(|(name, tensor)| (name.to_owned(), tensor.shallow_clone())).collect())
    }

    fn set_totals(&mut self, totals: Vec<(String, Tensor)>) -> Result<()> {
        let mut tensors = Tensors::new();
        for (name, tensor) in totals {
            tensors.insert(name, tensor);
        }
        self.0.call(ExtensionOp::METRIC_SET_TOTALS, "set_totals", "{}", &tensors)?;
        Ok(())
    }

    fn compute(&mut self) -> Result<MetricResults> {
        let (answer, _) = self.0.call_json(ExtensionOp::METRIC_COMPUTE, "compute", "{}", &Tensors::new())?;
        // JSON has no NaN: an undefined value (no examples) arrives as null.
        let values = answer["values"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NAN))).collect())
            .unwrap_or_default();
        let report = Some(answer["report"].clone()).filter(|r| !r.is_null());
        Ok(MetricResults { values, report })
    }
}
