//! The callback interface, after Hugging Face's `TrainerCallback`: the same events, the same
//! `args`, `state`, `control` triple, the same control flags.

use serde::Deserialize;

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

    /// The metric that decides the best model (`metric_for_best_model`, as evaluation
    /// metrics name it: `eval_loss`), and its direction (`greater_is_better`, which
    /// defaults to false for metrics ending in "loss", as Hugging Face resolves it); `None`
    /// when the run has no such metric. Since plugin-api 1.5.
    pub fn best_metric(&self) -> Option<BestMetric> {
        let metric = self.metric_for_best_model.as_deref()?;
        Some(BestMetric::resolve(metric, self.greater_is_better))
    }
}

/// The metric that decides the best model: [`TrainingArguments::best_metric`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestMetric {
    /// The metric's name in evaluation metrics (`eval_loss`, `eval_accuracy`).
    pub key: String,
    pub greater_is_better: bool,
}

impl BestMetric {
    /// Hugging Face's resolution of `metric_for_best_model` (with or without its `eval_`
    /// prefix) and `greater_is_better` (default: false for metrics ending in "loss").
    pub fn resolve(metric: &str, greater_is_better: Option<bool>) -> Self {
        let key = if metric.starts_with("eval_") { metric.to_owned() } else { format!("eval_{metric}") };
        Self { key, greater_is_better: greater_is_better.unwrap_or(!metric.ends_with("loss")) }
    }

    /// Whether `value` is strictly better than `best` (anything is better than nothing).
    pub fn improves_on(&self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => true,
            Some(best) if self.greater_is_better => value > best,
            Some(best) => value < best,
        }
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

    fn args(json: &str) -> TrainingArguments {
        TrainingArguments::from_json(json).unwrap()
    }

    #[test]
    fn best_metric_resolves_as_hugging_face() {
        let cases = [
            (r#"{}"#, None),
            (r#"{"metric_for_best_model": "loss"}"#, Some(("eval_loss", false))),
            (r#"{"metric_for_best_model": "eval_accuracy"}"#, Some(("eval_accuracy", true))),
            (r#"{"metric_for_best_model": "f1", "greater_is_better": false}"#, Some(("eval_f1", false))),
            (r#"{"metric_for_best_model": "train_loss"}"#, Some(("eval_train_loss", false))),
        ];
        for (json, expected) in cases {
            let got = args(json).best_metric();
            let expected =
                expected.map(|(key, greater)| BestMetric { key: key.to_owned(), greater_is_better: greater });
            assert_eq!(got, expected, "{json}");
        }
    }

    #[test]
    fn improvement_is_strict_and_follows_the_direction() {
        let lower = BestMetric { key: "eval_loss".into(), greater_is_better: false };
        assert!(lower.improves_on(0.5, None));
        assert!(lower.improves_on(0.4, Some(0.5)));
        assert!(!lower.improves_on(0.5, Some(0.5)));
        let higher = BestMetric { key: "eval_accuracy".into(), greater_is_better: true };
        assert!(higher.improves_on(0.9, Some(0.8)));
        assert!(!higher.improves_on(0.7, Some(0.8)));
    }
}
