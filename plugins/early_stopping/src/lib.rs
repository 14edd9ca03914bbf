//! `early_stopping`: stops training when the evaluation metric stops improving, as Hugging
//! Face's `EarlyStoppingCallback`.
//!
//! Config:
//! - `early_stopping_patience` (default 1): evaluations without improvement before stopping.
//! - `early_stopping_threshold` (default 0.0): how much better than the best a metric must
//!   be to count as an improvement.
//!
//! The metric is the run's `metric_for_best_model` (with `greater_is_better`); evaluations
//! must be on. The patience counter is saved in checkpoints and restored on resume.

use plugin_api::prelude::*;
use plugin_api::serde_json::{json, Value};

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Evaluations without improvement of metric_for_best_model before training stops.
    early_stopping_patience: i64,
    /// How much the metric must improve to count as an improvement.
    early_stopping_threshold: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { early_stopping_patience: 1, early_stopping_threshold: 0.0 }
    }
}

struct EarlyStopping {
    patience: i64,
    threshold: f64,
    counter: i64,
}

impl EarlyStopping {
    fn new(config: Config) -> Result<Self, PluginError> {
        if config.early_stopping_patience < 1 {
            return Err(PluginError::config(format!(
                "early_stopping_patience must be at least 1 (got {})",
                config.early_stopping_patience
            )));
        }
        if config.early_stopping_threshold.is_nan() || config.early_stopping_threshold < 0.0 {
            return Err(PluginError::config(format!(
                "early_stopping_threshold must be >= 0 (got {})",
                config.early_stopping_threshold
            )));
        }
        Ok(Self { patience: config.early_stopping_patience, threshold: config.early_stopping_threshold, counter: 0 })
    }
}

impl Callback for EarlyStopping {
    fn on_train_begin(
        &mut self,
        args: &TrainingArguments,
        _: &TrainerState,
        _: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        if args.metric_for_best_model.is_none() {
            return Err(PluginError::config(
                "early_stopping needs metric_for_best_model (for example --metric-for-best-model loss)",
            ));
        }
        if args.eval_strategy == "no" {
            return Err(PluginError::config("early_stopping needs evaluations: set eval_strategy to steps or epoch"));
        }
        Ok(())
    }

    fn on_evaluate(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
        metrics: &Metrics,
    ) -> Result<(), PluginError> {
        let Some(best_metric) = args.best_metric() else { return Ok(()) };
        let Some(value) = metrics.get(&best_metric.key) else { return Ok(()) };
        // As HF: an improvement must also exceed the threshold.
        let improved = best_metric.improves_on(value, state.best_metric)
            && state.best_metric.is_none_or(|best| (value - best).abs() > self.threshold);
        self.counter = if improved { 0 } else { self.counter + 1 };
        if self.counter >= self.patience {
            control.should_training_stop = true;
        }
        Ok(())
    }

    fn state(&self) -> Option<Value> {
        Some(json!({ "early_stopping_patience_counter": self.counter }))
    }

    fn load_state(&mut self, state: Value) -> Result<(), PluginError> {
        self.counter = state["early_stopping_patience_counter"]
            .as_i64()
            .ok_or_else(|| PluginError::new("saved state lacks early_stopping_patience_counter"))?;
        Ok(())
    }
}

export_plugin! {
    callbacks: { "early_stopping" => EarlyStopping::new },
}
