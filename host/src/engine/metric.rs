//! Evaluation metrics that run beside the built-in ones (HF's `compute_metrics` with
//! `batch_eval_metrics`): the trait the engine drives, which the plugin adapter
//! implements.

use anyhow::Result;
use tch::Tensor;

use crate::engine::data::Batch;
use crate::engine::models::Outputs;

/// What a metric reports: named values, and a report of any shape to write as JSON.
pub struct MetricResults {
    pub values: Vec<(String, f64)>,
    pub report: Option<serde_json::Value>,
}

/// A metric updated per evaluation batch and computed at the end.
pub trait Metric {
    fn name(&self) -> &str;
    /// Before an evaluation.
    fn reset(&mut self) -> Result<()>;
    /// One evaluation batch: the model's outputs and the batch.
    fn update(&mut self, outputs: &Outputs, batch: &Batch) -> Result<()>;
    /// The running totals to sum across ranks (none: each rank reports its own share).
    fn totals(&mut self) -> Result<Vec<(String, Tensor)>>;
    /// The totals summed across ranks, in the order `totals` gave them.
    fn set_totals(&mut self, totals: Vec<(String, Tensor)>) -> Result<()>;
    fn compute(&mut self) -> Result<MetricResults>;
}
