//! The one place where the host's own types become the plugin ABI's and back: events,
//! trainer state and control flags.

use plugin_api::ffi::{self, ControlBits, EventFfi, Metric, StateFfi, StateIndex};

use crate::engine::callbacks::events::{Event, TrainerControl};
use crate::engine::trainer::state::TrainerState;

/// The ABI's code for an event (the codes are frozen by plugin-api).
pub fn event_code(event: Event) -> ffi::Event {
    match event {
        Event::InitEnd => ffi::Event::INIT_END,
        Event::TrainBegin => ffi::Event::TRAIN_BEGIN,
        Event::TrainEnd => ffi::Event::TRAIN_END,
        Event::EpochBegin => ffi::Event::EPOCH_BEGIN,
        Event::EpochEnd => ffi::Event::EPOCH_END,
        Event::StepBegin => ffi::Event::STEP_BEGIN,
        Event::SubstepEnd => ffi::Event::SUBSTEP_END,
        Event::PreOptimizerStep => ffi::Event::PRE_OPTIMIZER_STEP,
        Event::OptimizerStep => ffi::Event::OPTIMIZER_STEP,
        Event::StepEnd => ffi::Event::STEP_END,
        Event::Evaluate => ffi::Event::EVALUATE,
        Event::Predict => ffi::Event::PREDICT,
        Event::Save => ffi::Event::SAVE,
        Event::Log => ffi::Event::LOG,
        Event::PredictionStep => ffi::Event::PREDICTION_STEP,
    }
}

/// The state as plugin-api's `TrainerState` shows it to callbacks.
fn state_view(state: &TrainerState) -> plugin_api::TrainerState {
    plugin_api::TrainerState {
        epoch: state.epoch,
        global_step: state.global_step,
        max_steps: state.max_steps,
        num_train_epochs: state.num_train_epochs,
        logging_steps: state.logging_steps,
        eval_steps: state.eval_steps,
        save_steps: state.save_steps,
        train_batch_size: state.train_batch_size,
        best_metric: state.best_metric,
        best_global_step: state.best_global_step,
        best_model_checkpoint: state.best_model_checkpoint.clone(),
        is_local_process_zero: state.is_local_process_zero,
        is_world_process_zero: state.is_world_process_zero,
        total_flos: state.total_flos,
        num_input_tokens_seen: state.num_input_tokens_seen,
        is_hyper_param_search: state.is_hyper_param_search,
    }
}

/// One event in the ABI's form, made once and given to every callback.
pub struct EventCall {
    pub event: Event,
    numbers: [f64; StateIndex::COUNT],
    checkpoint: String,
    metrics: Vec<(String, f64)>,
}

impl EventCall {
    pub fn new(event: Event, state: &TrainerState, metrics: &[(String, f64)]) -> Self {
        Self {
            event,
            numbers: ffi::state_numbers(&state_view(state)),
            checkpoint: state.best_model_checkpoint.clone().unwrap_or_default(),
            metrics: metrics.to_vec(),
        }
    }

    /// The borrowed views that cross the boundary; `metrics` holds them while they do.
    pub fn views<'a>(&'a self, metrics: &'a mut Vec<Metric<'a>>) -> EventFfi<'a> {
        metrics.extend(self.metrics.iter().map(|(name, value)| Metric { name: name.as_str().into(), value: *value }));
        EventFfi {
            event: event_code(self.event),
            state: StateFfi {
                numbers: self.numbers.as_slice().into(),
                best_model_checkpoint: self.checkpoint.as_str().into(),
            },
            metrics: metrics.as_slice().into(),
        }
    }
}

/// The flags as ABI bits.
pub fn control_bits(control: &TrainerControl) -> ControlBits {
    let mut bits = ControlBits::default();
    ffi::write_control_bits(&control_view(control), &mut bits);
    bits
}

/// The flags that `bits` hold (bits this host does not know are dropped).
pub fn control_from_bits(bits: ControlBits) -> TrainerControl {
    let c = ffi::control_from_bits(bits);
    TrainerControl {
        should_training_stop: c.should_training_stop,
        should_epoch_stop: c.should_epoch_stop,
        should_save: c.should_save,
        should_evaluate: c.should_evaluate,
        should_log: c.should_log,
    }
}

fn control_view(control: &TrainerControl) -> plugin_api::TrainerControl {
    plugin_api::TrainerControl {
        should_training_stop: control.should_training_stop,
        should_epoch_stop: control.should_epoch_stop,
        should_save: control.should_save,
        should_evaluate: control.should_evaluate,
        should_log: control.should_log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_its_frozen_code_and_name() {
        for event in Event::ALL {
            assert_eq!(event_code(event).name(), Some(event.name()), "{event:?}");
        }
    }

    #[test]
    fn state_and_flags_survive_the_crossing() {
        let state = TrainerState {
            global_step: 12,
            epoch: 1.25,
            best_metric: Some(0.5),
            best_model_checkpoint: Some("out/checkpoint-10".into()),
            is_world_process_zero: true,
            ..Default::default()
        };
        let call = EventCall::new(Event::Evaluate, &state, &[("eval_loss".to_owned(), 0.5)]);
        let mut metrics = Vec::new();
        let views = call.views(&mut metrics);
        let seen = ffi::state_from_ffi(&views.state);
        assert_eq!(seen, state_view(&state));
        assert_eq!(views.metrics.len(), 1);
        let control = TrainerControl { should_save: true, should_log: true, ..Default::default() };
        assert_eq!(control_from_bits(control_bits(&control)), control);
    }
}
