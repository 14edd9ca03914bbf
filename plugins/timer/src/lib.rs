//! `timer`: stops training once a wall-clock budget is spent, after the optimizer step in
//! progress and with a checkpoint, as Lightning's `Timer` callback.
//!
//! Config: `max_seconds` (the budget, counted from the start of training).

use std::time::Instant;

use plugin_api::prelude::*;

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Wall-clock budget of training in seconds; training stops with a checkpoint once it is spent.
    max_seconds: f64,
}

struct Timer {
    budget: f64,
    started: Option<Instant>,
}

impl Timer {
    fn new(config: Config) -> Result<Self, PluginError> {
        if !(config.max_seconds > 0.0 && config.max_seconds.is_finite()) {
            return Err(PluginError::config(format!("max_seconds must be > 0 (got {})", config.max_seconds)));
        }
        Ok(Self { budget: config.max_seconds, started: None })
    }
}

impl Callback for Timer {
    fn on_train_begin(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        _: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        self.started = Some(Instant::now());
        Ok(())
    }

    fn on_step_end(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        if self.started.is_some_and(|t| t.elapsed().as_secs_f64() >= self.budget) {
            control.should_training_stop = true;
            control.should_save = true;
        }
        Ok(())
    }
}

export_plugin! {
    callbacks: { "timer" => Timer::new },
}
