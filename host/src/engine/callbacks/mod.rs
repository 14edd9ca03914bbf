//! The callback handler: Hugging Face's `CallbackHandler` with its `DefaultFlowCallback`
//! built in, then the plugin callbacks in the order given.

use anyhow::Result;
use plugin_api::ffi::{ControlBits, Event, EventFfi, Metric, StateFfi};
use plugin_api::{TrainerControl, TrainerState};

use crate::config::arguments::{IntervalStrategy, SaveStrategy, TrainingArguments};
use crate::plugins::library::PluginCallback;

/// Runs events through the default flow and the plugin callbacks, and holds the
/// `TrainerControl` flags between events.
pub struct CallbackHandler {
    callbacks: Vec<PluginCallback>,
    pub control: TrainerControl,
}

impl CallbackHandler {
    pub fn new(callbacks: Vec<PluginCallback>) -> Self {
        Self { callbacks, control: TrainerControl::default() }
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
        reset_before(event, &mut self.control);
        default_flow(event, args, state, &mut self.control);
        if self.callbacks.is_empty() {
            return Ok(());
        }
        let numbers = state.to_numbers();
        let checkpoint = state.best_model_checkpoint.as_deref().unwrap_or("");
        let metric_views: Vec<Metric<'_>> =
            metrics.iter().map(|(name, value)| Metric { name: name.as_str().into(), value: *value }).collect();
        let ffi = EventFfi {
            event,
            state: StateFfi { numbers: numbers.as_slice().into(), best_model_checkpoint: checkpoint.into() },
            metrics: metric_views.as_slice().into(),
        };
        let mut bits = ControlBits::default();
        self.control.write_bits(&mut bits);
        for callback in &mut self.callbacks {
            callback.on_event(ffi, &mut bits)?;
        }
        self.control = TrainerControl::from_bits(bits);
        Ok(())
    }
}

impl CallbackHandler {
    /// HF `stateful_callbacks` (the control flags, and each plugin callback that has state,
    /// by component name), and the tensors of the callbacks' states, named
    /// `{callback}.{tensor}` (plugin-api 1.3); one state call per callback.
    pub fn states(&mut self) -> Result<(serde_json::Value, Vec<(String, tch::Tensor)>)> {
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
        for callback in &mut self.callbacks {
            let (state, tensors) = callback.state()?;
            if let Some(state) = state {
                states.insert(callback.name.clone(), serde_json::json!({ "args": {}, "attributes": state }));
            }
            for (name, tensor) in tensors.iter() {
                all_tensors.push((format!("{}.{name}", callback.name), tensor.shallow_clone()));
            }
        }
        Ok((serde_json::Value::Object(states), all_tensors))
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
        for callback in &mut self.callbacks {
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

/// Hugging Face `CallbackHandler`: flags cleared before an event is dispatched.
fn reset_before(event: Event, control: &mut TrainerControl) {
    match event {
        Event::TRAIN_BEGIN => control.should_training_stop = false,
        Event::EPOCH_BEGIN => control.should_epoch_stop = false,
        Event::STEP_BEGIN => {
            control.should_log = false;
            control.should_evaluate = false;
            control.should_save = false;
        }
        Event::LOG => control.should_log = false,
        Event::EVALUATE => control.should_evaluate = false,
        Event::SAVE => control.should_save = false,
        _ => {}
    }
}

/// Hugging Face `DefaultFlowCallback`: when to log, evaluate and stop.
fn default_flow(event: Event, args: &TrainingArguments, state: &TrainerState, control: &mut TrainerControl) {
    match event {
        Event::STEP_END => {
            if state.global_step == 1 && args.logging_first_step {
                control.should_log = true;
            }
            if args.logging_strategy == IntervalStrategy::Steps && state.global_step % state.logging_steps == 0 {
                control.should_log = true;
            }
            if args.eval_strategy == IntervalStrategy::Steps
                && state.global_step % state.eval_steps == 0
                && args.eval_delay <= state.global_step as f64
            {
                control.should_evaluate = true;
            }
            if args.save_strategy == SaveStrategy::Steps
                && state.save_steps > 0
                && state.global_step % state.save_steps == 0
            {
                control.should_save = true;
            }
            if state.global_step >= state.max_steps {
                control.should_training_stop = true;
                // Save the model at the end when saving by steps.
                if args.save_strategy == SaveStrategy::Steps {
                    control.should_save = true;
                }
            }
        }
        Event::EPOCH_END => {
            if args.logging_strategy == IntervalStrategy::Epoch {
                control.should_log = true;
            }
            if args.eval_strategy == IntervalStrategy::Epoch && args.eval_delay <= state.epoch {
                control.should_evaluate = true;
            }
            if args.save_strategy == SaveStrategy::Epoch {
                control.should_save = true;
            }
        }
        _ => {}
    }
}
