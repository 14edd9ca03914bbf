//! The callback handler: Hugging Face's `CallbackHandler` with its `DefaultFlowCallback`
//! built in (`flow`), then the plugin callbacks in the order given.

pub mod events;
pub mod flow;

use anyhow::Result;

pub use events::{Event, TrainerControl};

use crate::config::arguments::TrainingArguments;
use crate::engine::trainer::state::TrainerState;
use crate::plugins::{PluginCallback, PluginCallbacks};

/// HF `stateful_callbacks`: each stateful callback's saved state, by name.
pub type StatefulCallbacks = serde_json::Map<String, serde_json::Value>;

/// Runs events through the default flow and the plugin callbacks, and holds the
/// `TrainerControl` flags between events.
pub struct CallbackHandler {
    callbacks: PluginCallbacks,
    pub control: TrainerControl,
}

impl CallbackHandler {
    pub fn new(callbacks: Vec<PluginCallback>) -> Self {
        Self { callbacks: PluginCallbacks::new(callbacks), control: TrainerControl::default() }
    }

    /// Whether plugin callbacks are loaded (only they can set control flags that differ
    /// between the ranks of a distributed run).
    pub fn has_callbacks(&self) -> bool {
        !self.callbacks.is_empty()
    }

    /// Fires `event`: applies Hugging Face's reset rule for it, the default flow, then each
    /// plugin callback in order. A plugin error stops here and is returned.
    pub fn fire(
        &mut self,
        event: Event,
        args: &TrainingArguments,
        state: &TrainerState,
        metrics: &[(String, f64)],
    ) -> Result<()> {
        flow::reset_before(event, &mut self.control);
        flow::default_flow(event, args, state, &mut self.control);
        self.callbacks.fire(event, state, metrics, &mut self.control)
    }
}

impl CallbackHandler {
    /// HF `stateful_callbacks` (the control flags, and each plugin callback that has state,
    /// by component name), and the tensors of the callbacks' states, named
    /// `{callback}.{tensor}` (plugin-api 1.3); one state call per callback.
    pub fn states(&mut self) -> Result<(StatefulCallbacks, Vec<(String, tch::Tensor)>)> {
        let c = &self.control;
        let mut states = serde_json::Map::new();
        states.insert(
            "TrainerControl".to_owned(),
            serde_json::json!({
                "args": {
                    "should_training_stop": c.should_training_stop,
                    "should_epoch_stop": c.should_epoch_stop,
                    "should_save": c.should_save,
                    "should_evaluate": c.should_evaluate,
                    "should_log": c.should_log,
                },
                "attributes": {},
            }),
        );
        let mut all_tensors = Vec::new();
        for callback in self.callbacks.iter_mut() {
            let (state, tensors) = callback.state()?;
            if let Some(state) = state {
                states.insert(callback.name.clone(), serde_json::json!({ "args": {}, "attributes": state }));
            }
            for (name, tensor) in tensors.iter() {
                all_tensors.push((format!("{}.{name}", callback.name), tensor.shallow_clone()));
            }
        }
        Ok((states, all_tensors))
    }

    /// Whether any callback wants the parameters after each step.
    pub fn wants_parameters(&self) -> bool {
        self.callbacks.iter().any(|c| c.wants_parameters)
    }

    /// Shows the parameters to the callbacks that want them.
    pub fn on_parameters(&mut self, parameters: &plugin_api::Tensors) -> Result<()> {
        for callback in self.callbacks.iter_mut().filter(|c| c.wants_parameters) {
            callback.on_parameters(parameters)?;
        }
        Ok(())
    }

    /// The weights a callback wants evaluations to use (the first that gives some).
    pub fn evaluation_weights(&mut self) -> Result<Option<plugin_api::Tensors>> {
        for callback in self.callbacks.iter_mut().filter(|c| c.wants_parameters) {
            if let Some(weights) = callback.evaluation_weights()? {
                return Ok(Some(weights));
            }
        }
        Ok(None)
    }
}

impl CallbackHandler {
    /// Whether any callback wants to see the gradients before optimizer steps.
    pub fn wants_gradients(&self) -> bool {
        self.callbacks.iter().any(|c| c.wants_gradients)
    }

    /// Shows the gradients to the callbacks that want them; true if any asks to skip.
    pub fn on_gradients(&mut self, gradients: &plugin_api::Tensors) -> Result<bool> {
        let mut skip = false;
        for callback in self.callbacks.iter_mut().filter(|c| c.wants_gradients) {
            skip |= callback.on_gradients(gradients)?;
        }
        Ok(skip)
    }

    /// The entries callbacks add to a log event.
    pub fn extra_logs(&mut self, logs: &[(String, f64)]) -> Result<Vec<(String, f64)>> {
        let mut extra = Vec::new();
        for callback in self.callbacks.iter_mut().filter(|c| c.wants_extra_logs) {
            extra.extend(callback.extra_logs(logs)?);
        }
        Ok(extra)
    }

    /// Restores the callbacks' states from a checkpoint's `stateful_callbacks`.
    pub fn restore_states(&mut self, stateful: &serde_json::Value, tensors: &[(String, tch::Tensor)]) -> Result<()> {
        for callback in self.callbacks.iter_mut() {
            let prefix = format!("{}.", callback.name);
            let mut own = plugin_api::Tensors::new();
            for (name, tensor) in tensors {
                if let Some(rest) = name.strip_prefix(&prefix) {
                    own.insert(rest, tensor.shallow_clone());
                }
            }
            let state = stateful.get(&callback.name).and_then(|s| s.get("attributes"));
            if state.is_some() || !own.is_empty() {
                callback.load_state(state.unwrap_or(&serde_json::Value::Null), &own)?;
            }
        }
        Ok(())
    }
}
