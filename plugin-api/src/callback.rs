//! The callback interface, after Hugging Face's `TrainerCallback`: the same events, the same
//! `args`, `state`, `control` triple, the same control flags.

use serde::Deserialize;

use crate::ffi::{ControlBits, StateFfi, StateIndex};
use crate::PluginError;

/// The training arguments of the run (Hugging Face `TrainingArguments` names), read-only.
///
/// Fields this version knows are typed; every argument the host sent, including ones added
/// in later host versions, is in [`TrainingArguments::get`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TrainingArguments {
    pub output_dir: String,
    pub num_train_epochs: f64,
    pub max_steps: i64,
    pub per_device_train_batch_size: i64,
    pub per_device_eval_batch_size: i64,
    pub gradient_accumulation_steps: i64,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub logging_strategy: String,
    pub logging_steps: f64,
    pub logging_first_step: bool,
    pub eval_strategy: String,
    pub eval_steps: Option<f64>,
    pub save_strategy: String,
    pub save_steps: f64,
    pub metric_for_best_model: Option<String>,
    pub greater_is_better: Option<bool>,
    #[serde(skip)]
    raw: serde_json::Map<String, serde_json::Value>,
}

impl TrainingArguments {
    /// Parses the JSON object the host sends.
    pub fn from_json(json: &str) -> Result<Self, PluginError> {
        let raw: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|e| PluginError::new(format!("bad training arguments from the host: {e}")))?;
        let mut args: Self = serde_json::from_value(serde_json::Value::Object(raw.clone()))
            .map_err(|e| PluginError::new(format!("bad training arguments from the host: {e}")))?;
        args.raw = raw;
        Ok(args)
    }

    /// Any argument by its Hugging Face name, as JSON.
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.raw.get(name)
    }
}

/// Hugging Face `TrainerState`, as seen by a callback during one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainerState {
    /// Fractional epoch: `1.5` is half way through the second epoch.
    pub epoch: f64,
    /// Optimizer steps taken so far.
    pub global_step: i64,
    pub max_steps: i64,
    pub num_train_epochs: f64,
    pub logging_steps: i64,
    pub eval_steps: i64,
    pub save_steps: i64,
    pub train_batch_size: i64,
    pub best_metric: Option<f64>,
    pub best_global_step: Option<i64>,
    pub best_model_checkpoint: Option<String>,
    /// In a distributed run, whether this is the first rank of its machine (LOCAL_RANK 0);
    /// true in a single-process run.
    pub is_local_process_zero: bool,
    /// In a distributed run, whether this is rank 0, the one that logs and writes files:
    /// a callback that writes files should write only here (as HF's callbacks do). Every
    /// rank runs the callbacks; a control flag any rank sets holds for all ranks.
    pub is_world_process_zero: bool,
    pub total_flos: f64,
    pub num_input_tokens_seen: i64,
    /// Since 1.1 (false from a 1.0 host).
    pub is_hyper_param_search: bool,
}

impl TrainerState {
    /// Reads the fields this version knows; ones the host did not send keep their defaults.
    pub fn from_ffi(state: &StateFfi<'_>) -> Self {
        let n = state.numbers.as_slice();
        let num = |i: usize| n.get(i).copied().filter(|v| !v.is_nan());
        let int = |i: usize| num(i).map(|v| v as i64);
        let flag = |i: usize| num(i).map(|v| v != 0.0).unwrap_or(false);
        let checkpoint = state.best_model_checkpoint.as_str();
        Self {
            epoch: num(StateIndex::EPOCH).unwrap_or(0.0),
            global_step: int(StateIndex::GLOBAL_STEP).unwrap_or(0),
            max_steps: int(StateIndex::MAX_STEPS).unwrap_or(0),
            num_train_epochs: num(StateIndex::NUM_TRAIN_EPOCHS).unwrap_or(0.0),
            logging_steps: int(StateIndex::LOGGING_STEPS).unwrap_or(0),
            eval_steps: int(StateIndex::EVAL_STEPS).unwrap_or(0),
            save_steps: int(StateIndex::SAVE_STEPS).unwrap_or(0),
            train_batch_size: int(StateIndex::TRAIN_BATCH_SIZE).unwrap_or(0),
            best_metric: num(StateIndex::BEST_METRIC),
            best_global_step: int(StateIndex::BEST_GLOBAL_STEP),
            best_model_checkpoint: (!checkpoint.is_empty()).then(|| checkpoint.to_owned()),
            is_local_process_zero: flag(StateIndex::IS_LOCAL_PROCESS_ZERO),
            is_world_process_zero: flag(StateIndex::IS_WORLD_PROCESS_ZERO),
            total_flos: num(StateIndex::TOTAL_FLOS).unwrap_or(0.0),
            num_input_tokens_seen: int(StateIndex::NUM_INPUT_TOKENS_SEEN).unwrap_or(0),
            is_hyper_param_search: flag(StateIndex::IS_HYPER_PARAM_SEARCH),
        }
    }

    /// The numbers slice for [`StateFfi`], in [`StateIndex`] order.
    pub fn to_numbers(&self) -> [f64; StateIndex::COUNT] {
        let opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let mut n = [0.0; StateIndex::COUNT];
        n[StateIndex::EPOCH] = self.epoch;
        n[StateIndex::GLOBAL_STEP] = self.global_step as f64;
        n[StateIndex::MAX_STEPS] = self.max_steps as f64;
        n[StateIndex::NUM_TRAIN_EPOCHS] = self.num_train_epochs;
        n[StateIndex::LOGGING_STEPS] = self.logging_steps as f64;
        n[StateIndex::EVAL_STEPS] = self.eval_steps as f64;
        n[StateIndex::SAVE_STEPS] = self.save_steps as f64;
        n[StateIndex::TRAIN_BATCH_SIZE] = self.train_batch_size as f64;
        n[StateIndex::BEST_METRIC] = opt(self.best_metric);
        n[StateIndex::BEST_GLOBAL_STEP] = opt(self.best_global_step.map(|s| s as f64));
        n[StateIndex::IS_LOCAL_PROCESS_ZERO] = flag(self.is_local_process_zero);
        n[StateIndex::IS_WORLD_PROCESS_ZERO] = flag(self.is_world_process_zero);
        n[StateIndex::TOTAL_FLOS] = self.total_flos;
        n[StateIndex::NUM_INPUT_TOKENS_SEEN] = self.num_input_tokens_seen as f64;
        n[StateIndex::IS_HYPER_PARAM_SEARCH] = flag(self.is_hyper_param_search);
        n
    }
}

/// Hugging Face `TrainerControl`: flags a callback sets to steer the loop. The host resets
/// them as Hugging Face does: `should_training_stop` at train begin, `should_epoch_stop` at
/// epoch begin, `should_log`/`should_evaluate`/`should_save` at step begin and after the
/// log/evaluation/save they asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainerControl {
    pub should_training_stop: bool,
    pub should_epoch_stop: bool,
    pub should_save: bool,
    pub should_evaluate: bool,
    pub should_log: bool,
}

impl TrainerControl {
    pub fn from_bits(bits: ControlBits) -> Self {
        Self {
            should_training_stop: bits.get(ControlBits::SHOULD_TRAINING_STOP),
            should_epoch_stop: bits.get(ControlBits::SHOULD_EPOCH_STOP),
            should_save: bits.get(ControlBits::SHOULD_SAVE),
            should_evaluate: bits.get(ControlBits::SHOULD_EVALUATE),
            should_log: bits.get(ControlBits::SHOULD_LOG),
        }
    }

    /// Writes the flags into `bits`, keeping bits this version does not know.
    pub fn write_bits(&self, bits: &mut ControlBits) {
        bits.set(ControlBits::SHOULD_TRAINING_STOP, self.should_training_stop);
        bits.set(ControlBits::SHOULD_EPOCH_STOP, self.should_epoch_stop);
        bits.set(ControlBits::SHOULD_SAVE, self.should_save);
        bits.set(ControlBits::SHOULD_EVALUATE, self.should_evaluate);
        bits.set(ControlBits::SHOULD_LOG, self.should_log);
    }
}

/// Logs (on_log) or metrics (on_evaluate, on_predict): names in the order the host made them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    entries: Vec<(String, f64)>,
}

impl Metrics {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl FromIterator<(String, f64)> for Metrics {
    fn from_iter<I: IntoIterator<Item = (String, f64)>>(iter: I) -> Self {
        Self { entries: iter.into_iter().collect() }
    }
}

/// A training callback. Every method defaults to doing nothing; implement the events you
/// need. Returning an error stops training with that message.
///
/// Event order per optimizer step with gradient accumulation N: on_step_begin, then
/// N-1 times on_substep_end, then on_pre_optimizer_step, on_optimizer_step, on_step_end,
/// and then as the control flags ask: on_log, evaluation (on_prediction_step per batch,
/// on_log, on_evaluate), on_save.
#[allow(unused_variables)]
pub trait Callback: 'static {
    fn on_init_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_train_begin(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_train_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_epoch_begin(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_step_begin(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_substep_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_pre_optimizer_step(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_optimizer_step(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_step_end(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_evaluate(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
        metrics: &Metrics,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_predict(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
        metrics: &Metrics,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_save(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_log(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
        logs: &Metrics,
    ) -> Result<(), PluginError> {
        Ok(())
    }
    fn on_prediction_step(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        control: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// The callback's own state (counters, best values, ...), saved with the trainer state
    /// (`stateful_callbacks` in trainer_state.json). `None`, the default, for a callback
    /// without state. Since plugin-api 1.1.
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Restores a state that [`Callback::state`] returned. Since plugin-api 1.1.
    fn load_state(&mut self, state: serde_json::Value) -> Result<(), PluginError> {
        Ok(())
    }

    /// Set to true to receive [`Callback::on_gradients`] (it costs a call per step).
    /// Since plugin-api 1.2.
    const WANTS_GRADIENTS: bool = false;

    /// The gradients (by parameter name, read-only) before each optimizer step, just
    /// before `on_pre_optimizer_step`. Return true to skip this step's update (the step is
    /// still counted; the schedule does not advance). Since plugin-api 1.2.
    fn on_gradients(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        gradients: &crate::Tensors,
    ) -> Result<bool, PluginError> {
        Ok(false)
    }

    /// Set to true to receive [`Callback::on_parameters`] and be asked for
    /// [`Callback::evaluation_weights`]. Since plugin-api 1.3.
    const WANTS_PARAMETERS: bool = false;

    /// The parameters (by name, read-only) after each optimizer step. Since plugin-api 1.3.
    fn on_parameters(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        parameters: &crate::Tensors,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    /// Weights to evaluate with instead of the trained ones (by parameter name), or `None`.
    /// The host restores the trained weights after the evaluation. Since plugin-api 1.3.
    fn evaluation_weights(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
    ) -> Result<Option<crate::Tensors>, PluginError> {
        Ok(None)
    }

    /// Tensors that belong to the callback's state (saved in checkpoints next to
    /// [`Callback::state`]). Since plugin-api 1.3.
    fn state_tensors(&self) -> crate::Tensors {
        crate::Tensors::new()
    }

    /// Restores what [`Callback::state_tensors`] returned. Since plugin-api 1.3.
    fn load_state_tensors(&mut self, tensors: crate::Tensors) -> Result<(), PluginError> {
        Ok(())
    }

    /// Set to true to receive [`Callback::extra_logs`]. Since plugin-api 1.2.
    const WANTS_EXTRA_LOGS: bool = false;

    /// Entries to add to a log event before it is written and sent to `on_log`.
    /// Since plugin-api 1.2.
    fn extra_logs(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        logs: &Metrics,
    ) -> Result<Vec<(String, f64)>, PluginError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_from_a_shorter_or_longer_slice() {
        let state = TrainerState { global_step: 7, epoch: 1.5, best_metric: Some(0.25), ..Default::default() };
        let numbers = state.to_numbers();
        // An older host sends fewer fields: the ones it sends are read, the rest default.
        let short = StateFfi { numbers: numbers[..3].into(), best_model_checkpoint: "".into() };
        let read = TrainerState::from_ffi(&short);
        assert_eq!((read.global_step, read.epoch, read.best_metric), (7, 1.5, None));
        // A newer host sends more: the unknown tail is ignored.
        let mut long = numbers.to_vec();
        long.extend([1.0, 2.0]);
        let ffi = StateFfi { numbers: long.as_slice().into(), best_model_checkpoint: "ckpt".into() };
        let read = TrainerState::from_ffi(&ffi);
        assert_eq!(read, TrainerState { best_model_checkpoint: Some("ckpt".into()), ..state });
    }

    #[test]
    fn control_bits_keep_unknown_flags() {
        let mut bits = ControlBits(1 << 20 | ControlBits::SHOULD_LOG);
        let mut control = TrainerControl::from_bits(bits);
        assert!(control.should_log);
        control.should_log = false;
        control.should_save = true;
        control.write_bits(&mut bits);
        assert_eq!(bits.0, 1 << 20 | ControlBits::SHOULD_SAVE);
    }
}
