//! A callback plugin compiled against plugin-api 1.0.0: it records the events and the
//! global step it sees, one line each, to the file in its config.

use std::fs::File;
use std::io::Write;

use plugin_api::prelude::*;

#[derive(Deserialize)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields)]
struct Config {
    path: String,
}

struct OldRecorder {
    file: File,
}

impl OldRecorder {
    fn new(config: Config) -> Result<Self, PluginError> {
        Ok(Self { file: File::create(config.path)? })
    }

    fn record(&mut self, event: &str, state: &TrainerState) -> Result<(), PluginError> {
        writeln!(self.file, "{event} {}", state.global_step)?;
        Ok(())
    }
}

impl Callback for OldRecorder {
    fn on_train_begin(
        &mut self,
        _: &TrainingArguments,
        s: &TrainerState,
        _: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        self.record("on_train_begin", s)
    }
    fn on_step_end(
        &mut self,
        _: &TrainingArguments,
        s: &TrainerState,
        _: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        self.record("on_step_end", s)
    }
    fn on_evaluate(
        &mut self,
        _: &TrainingArguments,
        s: &TrainerState,
        _: &mut TrainerControl,
        m: &Metrics,
    ) -> Result<(), PluginError> {
        writeln!(self.file, "on_evaluate {} eval_accuracy={}", s.global_step, m.get("eval_accuracy").is_some())?;
        Ok(())
    }
    fn on_train_end(
        &mut self,
        _: &TrainingArguments,
        s: &TrainerState,
        _: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        self.record("on_train_end", s)
    }
}

export_plugin! {
    callbacks: { "old_recorder" => OldRecorder::new },
}
