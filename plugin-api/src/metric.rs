//! The metrics interface (Hugging Face's `compute_metrics`, in its `batch_eval_metrics`
//! form: the metric sees one batch at a time and keeps running totals, so its memory does
//! not grow with the evaluation set). Since plugin-api 1.6.

use crate::{Metrics, PluginError, Tensors};

/// What a metric reports at the end of an evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricResults {
    /// Named numbers; the host logs each as `eval_<name>` (`test_<name>` for predict), and
    /// `metric_for_best_model` may name them.
    pub values: Metrics,
    /// A report of any shape (a confusion matrix, per-class scores); the host writes it as
    /// JSON to `<output_dir>/<component>.json` (`host eval`/`predict`: next to their
    /// results). `None` writes nothing.
    pub report: Option<serde_json::Value>,
}

/// An evaluation metric.
pub trait Metric: 'static {
    /// An evaluation starts: forget the totals of the previous one.
    fn reset(&mut self) -> Result<(), PluginError>;

    /// One evaluation batch: the model's `outputs` (`logits`, ...) and the `batch`
    /// (`labels`, ...). Add to running totals; do not keep the tensors.
    fn update(&mut self, outputs: &Tensors, batch: &Tensors) -> Result<(), PluginError>;

    /// The results from the totals.
    fn compute(&mut self) -> Result<MetricResults, PluginError>;

    /// The running totals as tensors that add up across the ranks of a distributed run
    /// (counts, sums). The host sums each over the ranks and hands the sums to
    /// [`Metric::set_totals`] before [`Metric::compute`]. The default, none, computes each
    /// rank's results from its own share of the evaluation set.
    fn totals(&self) -> Tensors {
        Tensors::new()
    }

    /// Takes the totals summed over the ranks (the names [`Metric::totals`] gave).
    #[allow(unused_variables)]
    fn set_totals(&mut self, totals: Tensors) -> Result<(), PluginError> {
        Ok(())
    }
}
