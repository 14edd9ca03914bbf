//! The learning-rate schedule interface (Hugging Face's `create_scheduler`). Since
//! plugin-api 1.6.

use crate::PluginError;

/// What a schedule is computed over: the run's length and its peak rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// `learning_rate`: the peak rate.
    pub base_lr: f64,
    /// The optimizer steps of the whole run.
    pub max_steps: i64,
    /// `warmup_steps` resolved to steps (a fraction of the run becomes a count).
    pub warmup_steps: i64,
}

/// A learning-rate schedule.
pub trait Scheduler: 'static {
    /// The learning rate of the optimizer step that follows `step` completed steps (0 for
    /// the first). May be called more than once for one step; return the same rate.
    fn lr(&mut self, step: i64, schedule: &Schedule) -> Result<f64, PluginError>;

    /// An evaluation gave `value` for `metric_for_best_model` (for schedules that follow a
    /// metric, as reduce_lr_on_plateau). The default ignores it.
    #[allow(unused_variables)]
    fn on_metric(&mut self, value: f64) -> Result<(), PluginError> {
        Ok(())
    }

    /// The schedule's own state, saved in checkpoints; `None`, the default, when the rate
    /// depends on the step alone.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Restores a state that [`Scheduler::state`] returned.
    #[allow(unused_variables)]
    fn load_state(&mut self, state: serde_json::Value) -> Result<(), PluginError> {
        Ok(())
    }
}
