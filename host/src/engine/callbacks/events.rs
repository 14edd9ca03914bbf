//! The vocabulary of Hugging Face's `trainer_callback.py`: the events a trainer fires, and
//! the control flags that callbacks set to steer it. The host's own types: the plugin ABI's
//! are converted to and from these in `plugins::abi` alone.

/// A trainer event, named after its `TrainerCallback` method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    InitEnd,
    TrainBegin,
    TrainEnd,
    EpochBegin,
    EpochEnd,
    StepBegin,
    SubstepEnd,
    PreOptimizerStep,
    OptimizerStep,
    StepEnd,
    Evaluate,
    Predict,
    Save,
    Log,
    PredictionStep,
}

impl Event {
    /// Every event.
    #[cfg(test)]
    pub const ALL: [Event; 15] = [
        Event::InitEnd,
        Event::TrainBegin,
        Event::TrainEnd,
        Event::EpochBegin,
        Event::EpochEnd,
        Event::StepBegin,
        Event::SubstepEnd,
        Event::PreOptimizerStep,
        Event::OptimizerStep,
        Event::StepEnd,
        Event::Evaluate,
        Event::Predict,
        Event::Save,
        Event::Log,
        Event::PredictionStep,
    ];

    /// The `TrainerCallback` method name: `on_step_end`, ...
    pub fn name(self) -> &'static str {
        match self {
            Event::InitEnd => "on_init_end",
            Event::TrainBegin => "on_train_begin",
            Event::TrainEnd => "on_train_end",
            Event::EpochBegin => "on_epoch_begin",
            Event::EpochEnd => "on_epoch_end",
            Event::StepBegin => "on_step_begin",
            Event::SubstepEnd => "on_substep_end",
            Event::PreOptimizerStep => "on_pre_optimizer_step",
            Event::OptimizerStep => "on_optimizer_step",
            Event::StepEnd => "on_step_end",
            Event::Evaluate => "on_evaluate",
            Event::Predict => "on_predict",
            Event::Save => "on_save",
            Event::Log => "on_log",
            Event::PredictionStep => "on_prediction_step",
        }
    }
}

/// Hugging Face's `TrainerControl`: what the trainer should do next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainerControl {
    pub should_training_stop: bool,
    pub should_epoch_stop: bool,
    pub should_save: bool,
    pub should_evaluate: bool,
    pub should_log: bool,
}
