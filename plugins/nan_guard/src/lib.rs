//! `nan_guard`: watches the gradients before each optimizer step. When one is NaN or
//! infinite (a non-finite loss gives such gradients), it skips that update
//! (`mode = "skip"`, the default), or stops training with a checkpoint (`mode = "stop"`).
//! The number of skipped updates is in the logs (`nan_guard_skipped`) and in checkpoints.

use plugin_api::prelude::*;
use plugin_api::serde_json::{json, Value};

#[derive(Deserialize, JsonSchema, Default)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// What to do on non-finite gradients: skip that update, or stop training with a checkpoint.
    mode: Mode,
}

// Serialize lets the schema show the default.
#[derive(Deserialize, plugin_api::serde::Serialize, JsonSchema, Default, PartialEq)]
#[serde(crate = "plugin_api::serde", rename_all = "lowercase")]
#[schemars(crate = "plugin_api::schemars")]
enum Mode {
    #[default]
    Skip,
    Stop,
}

struct NanGuard {
    stop: bool,
    skipped: u64,
    stop_now: bool,
}

impl NanGuard {
    fn new(config: Config) -> Result<Self, PluginError> {
        Ok(Self { stop: config.mode == Mode::Stop, skipped: 0, stop_now: false })
    }
}

impl Callback for NanGuard {
    const WANTS_GRADIENTS: bool = true;
    const WANTS_EXTRA_LOGS: bool = true;

    fn on_gradients(
        &mut self,
        _: &TrainingArguments,
        state: &TrainerState,
        gradients: &Tensors,
    ) -> Result<bool, PluginError> {
        let finite = gradients.iter().all(|(_, g)| g.isfinite().all().int64_value(&[]) != 0);
        if finite {
            return Ok(false);
        }
        self.skipped += 1;
        eprintln!("nan_guard: non-finite gradients at step {}: update skipped", state.global_step + 1);
        self.stop_now = self.stop;
        Ok(true)
    }

    fn on_pre_optimizer_step(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        if self.stop_now {
            control.should_training_stop = true;
            control.should_save = true;
        }
        Ok(())
    }

    fn extra_logs(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        logs: &Metrics,
    ) -> Result<Vec<(String, f64)>, PluginError> {
        let is_train = logs.get("loss").is_some();
        Ok(if is_train { vec![("nan_guard_skipped".to_owned(), self.skipped as f64)] } else { Vec::new() })
    }

    fn state(&self) -> Option<Value> {
        Some(json!({ "skipped": self.skipped }))
    }

    fn load_state(&mut self, state: Value) -> Result<(), PluginError> {
        self.skipped = state["skipped"].as_u64().ok_or_else(|| PluginError::new("saved state lacks skipped"))?;
        Ok(())
    }
}

export_plugin! {
    callbacks: { "nan_guard" => NanGuard::new },
}
