//! The JSON files of a checkpoint, typed: what each holds, and what values are possible.
//! A checkpoint whose files verify against its manifest can still hold impossible values
//! (edited by hand, written by a bug): `Records::read` refuses those with the file and the
//! value named, so that a resume never starts from them.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::engine::trainer::state::{Position, TrainerState};

/// trainer_state.json: Hugging Face's `TrainerState.save_to_json` keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainerStateRecord {
    #[serde(flatten)]
    pub state: TrainerState,
    #[serde(flatten)]
    pub extras: TrainerStateExtras,
}

/// The keys of trainer_state.json beside the state's own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerStateExtras {
    pub log_history: Vec<Value>,
    /// HF `stateful_callbacks`: the control flags and each stateful callback's state.
    #[serde(default)]
    pub stateful_callbacks: Map<String, Value>,
    #[serde(default)]
    pub trial_name: Option<String>,
    #[serde(default)]
    pub trial_params: Option<Value>,
}

/// host_state.json: what the host needs beyond HF's files to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStateRecord {
    pub position: Position,
    /// The training loss summed since the last log, over all ranks.
    #[serde(deserialize_with = "number_or_nan")]
    pub loss_since_log: f64,
    /// The ranks of the run that wrote it.
    pub world_size: usize,
    #[serde(deserialize_with = "number_or_nan")]
    pub total_loss: f64,
    pub last_logged_step: i64,
    pub samples_seen: usize,
    /// fp16 runs: the loss scale.
    pub grad_scaler: Option<ScalerRecord>,
    /// The loss plugin's own state.
    pub loss_state: Option<Value>,
    /// The resolved configuration (a table `--config` accepts), for `host eval`/`predict`.
    pub run_config: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalerRecord {
    pub scale: f64,
}

/// optimizer.json: which optimizer, and its counters (its tensors are in
/// optimizer.safetensors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerRecord {
    pub optim: String,
    pub optim_args: String,
    pub scalars: Value,
}

/// scheduler.json: the schedule's own state (reduce_lr_on_plateau's), and the steps whose
/// update was skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerRecord {
    pub state: Value,
    pub skipped_steps: i64,
}

/// Every JSON record of one checkpoint, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Records {
    pub trainer_state: TrainerStateRecord,
    pub host_state: HostStateRecord,
    pub optimizer: OptimizerRecord,
    pub scheduler: SchedulerRecord,
}

pub const TRAINER_STATE: &str = "trainer_state.json";
pub const HOST_STATE: &str = "host_state.json";
pub const OPTIMIZER: &str = "optimizer.json";
pub const SCHEDULER: &str = "scheduler.json";
pub const TRAINING_ARGS: &str = "training_args.json";

impl Records {
    /// Reads the records of checkpoint `dir`; the error names the file and what is wrong.
    pub fn read(dir: &Path) -> Result<Self, String> {
        // Two passes over one value, as serde names no field inside a flattened struct.
        let trainer_state: Value = read(dir, TRAINER_STATE)?;
        let trainer_state = TrainerStateRecord {
            state: from_value(dir, TRAINER_STATE, &trainer_state)?,
            extras: from_value(dir, TRAINER_STATE, &trainer_state)?,
        };
        let records = Self {
            trainer_state,
            host_state: read(dir, HOST_STATE)?,
            optimizer: read(dir, OPTIMIZER)?,
            scheduler: read(dir, SCHEDULER)?,
        };
        records.check().map_err(|problem| format!("{}: {problem}", dir.display()))?;
        Ok(records)
    }

    /// What evaluating a checkpoint's model needs: its trainer state and host state (the
    /// run's configuration). Unlike `read`, fine for a model-only checkpoint
    /// (save_only_model), which has no optimizer or scheduler records.
    pub fn read_for_evaluation(dir: &Path) -> Result<(TrainerState, HostStateRecord), String> {
        let trainer_state: Value = read(dir, TRAINER_STATE)?;
        Ok((from_value(dir, TRAINER_STATE, &trainer_state)?, read(dir, HOST_STATE)?))
    }

    /// Values no run can have written, and values that contradict each other.
    fn check(&self) -> Result<(), String> {
        let s = &self.trainer_state.state;
        let (step, host) = (s.global_step, &self.host_state);
        let fail = |file: &str, what: String| Err(format!("{file}: {what}"));
        if step < 0 {
            return fail(TRAINER_STATE, format!("global_step {step} is negative"));
        }
        if s.max_steps < 1 || step > s.max_steps {
            return fail(TRAINER_STATE, format!("global_step {step} is not within max_steps {}", s.max_steps));
        }
        if !(s.num_train_epochs > 0.0 && s.num_train_epochs.is_finite()) {
            return fail(TRAINER_STATE, format!("num_train_epochs {} is not a positive number", s.num_train_epochs));
        }
        if !(s.epoch >= 0.0 && s.epoch <= s.num_train_epochs + 1e-9) {
            return fail(
                TRAINER_STATE,
                format!("epoch {} is not within num_train_epochs {}", s.epoch, s.num_train_epochs),
            );
        }
        if let Some(best) = s.best_global_step.filter(|&b| b < 0 || b > step) {
            return fail(TRAINER_STATE, format!("best_global_step {best} is not within global_step {step}"));
        }
        if let Some(entry) = self.trainer_state.extras.log_history.iter().find(|e| !logged_by_step(e, step)) {
            return fail(TRAINER_STATE, format!("log_history has an entry after global_step {step}: {entry}"));
        }
        // The fractional epoch lies in the position's epoch, or at its end.
        let at = host.position.epoch;
        if at < 0 || !(s.epoch >= at as f64 - 1e-9 && s.epoch <= at as f64 + 1.0 + 1e-9) {
            return fail(
                HOST_STATE,
                format!("position epoch {at} does not match the trainer state's epoch {}", s.epoch),
            );
        }
        if !(0..=step).contains(&host.last_logged_step) {
            return fail(
                HOST_STATE,
                format!("last_logged_step {} is not within global_step {step}", host.last_logged_step),
            );
        }
        if host.world_size < 1 {
            return fail(HOST_STATE, "world_size is 0".to_owned());
        }
        if let Some(scale) = host.grad_scaler.map(|g| g.scale).filter(|s| !(s.is_finite() && *s > 0.0)) {
            return fail(HOST_STATE, format!("grad_scaler scale {scale} is not a positive number"));
        }
        if !host.run_config.is_object() {
            return fail(HOST_STATE, "run_config is not a table of the run's settings".to_owned());
        }
        let skipped = self.scheduler.skipped_steps;
        if !(0..=step).contains(&skipped) {
            return fail(SCHEDULER, format!("skipped_steps {skipped} is not within global_step {step}"));
        }
        Ok(())
    }
}

/// Whether a log entry was made by `step` (entries without a step are HF's own extras).
fn logged_by_step(entry: &Value, step: i64) -> bool {
    entry.as_object().is_some() && entry.get("step").and_then(Value::as_i64).is_none_or(|s| (0..=step).contains(&s))
}

fn read<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T, String> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    from_value(dir, name, &value)
}

/// A record from a file's JSON; the error names the file and the key.
fn from_value<T: serde::de::DeserializeOwned>(dir: &Path, name: &str, value: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        let at = if at == "." { String::new() } else { format!(" at {at}") };
        format!("{} is not a valid {name}{at}: {}", dir.join(name).display(), e.inner())
    })
}

/// JSON has no NaN: a NaN total is written as null, and read back as NaN.
fn number_or_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, records: &[(&str, Value)]) {
        for (name, value) in records {
            std::fs::write(dir.join(name), serde_json::to_string_pretty(value).unwrap()).unwrap();
        }
    }

    /// The records of a run of 30 steps of 10 per epoch, saved at step 12.
    fn valid() -> Vec<(&'static str, Value)> {
        let trainer_state = serde_json::json!({
            "best_global_step": 10, "best_metric": 0.5, "best_model_checkpoint": "out/checkpoint-10",
            "epoch": 1.2, "eval_steps": 10, "global_step": 12, "is_hyper_param_search": false,
            "is_local_process_zero": true, "is_world_process_zero": true,
            "log_history": [{"loss": 1.0, "step": 10}, {"eval_loss": 0.5, "step": 10}],
            "logging_steps": 10, "max_steps": 30, "num_input_tokens_seen": 0, "num_train_epochs": 3.0,
            "save_steps": 6, "stateful_callbacks": {}, "total_flos": 0.0, "train_batch_size": 8,
            "trial_name": null, "trial_params": null,
        });
        let host_state = serde_json::json!({
            "position": {"epoch": 1, "micro_batches_done": 2}, "loss_since_log": 2.0, "world_size": 1,
            "total_loss": 10.0, "last_logged_step": 10, "samples_seen": 96, "grad_scaler": null,
            "loss_state": null, "run_config": {"learning_rate": 0.001},
        });
        vec![
            (TRAINER_STATE, trainer_state),
            (HOST_STATE, host_state),
            (OPTIMIZER, serde_json::json!({"optim": "adamw", "optim_args": "", "scalars": {"step": 12}})),
            (SCHEDULER, serde_json::json!({"state": {}, "skipped_steps": 0})),
        ]
    }

    /// The records with one value replaced (`file`, JSON pointer, new value).
    fn with(file: &str, pointer: &str, value: Value) -> Vec<(&'static str, Value)> {
        let mut records = valid();
        let record = &mut records.iter_mut().find(|(name, _)| *name == file).unwrap().1;
        *record.pointer_mut(pointer).unwrap() = value;
        records
    }

    #[test]
    fn valid_records_read_back() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &valid());
        let records = Records::read(dir.path()).unwrap();
        assert_eq!(records.trainer_state.state.global_step, 12);
        assert_eq!(records.host_state.position, Position { epoch: 1, micro_batches_done: 2 });
        // A NaN total is saved as null and comes back as NaN.
        write(dir.path(), &with(HOST_STATE, "/total_loss", Value::Null));
        assert!(Records::read(dir.path()).unwrap().host_state.total_loss.is_nan());
    }

    #[test]
    fn impossible_values_are_refused_with_the_file_and_value() {
        let cases = [
            (with(TRAINER_STATE, "/global_step", (-1).into()), "trainer_state.json: global_step -1 is negative"),
            (with(TRAINER_STATE, "/global_step", 31.into()), "global_step 31 is not within max_steps 30"),
            (with(TRAINER_STATE, "/epoch", 999.into()), "epoch 999 is not within num_train_epochs 3"),
            (with(TRAINER_STATE, "/epoch", (-0.5).into()), "epoch -0.5 is not within num_train_epochs 3"),
            (with(TRAINER_STATE, "/best_global_step", 20.into()), "best_global_step 20 is not within global_step 12"),
            (with(TRAINER_STATE, "/log_history/0/step", 13.into()), "log_history has an entry after global_step 12"),
            (with(TRAINER_STATE, "/global_step", "12".into()), "trainer_state.json at global_step: invalid type"),
            (with(HOST_STATE, "/position/micro_batches_done", (-5).into()), "at position.micro_batches_done"),
            (
                with(HOST_STATE, "/position/epoch", 0.into()),
                "position epoch 0 does not match the trainer state's epoch 1.2",
            ),
            (with(HOST_STATE, "/last_logged_step", 14.into()), "last_logged_step 14 is not within global_step 12"),
            (with(HOST_STATE, "/world_size", 0.into()), "host_state.json: world_size is 0"),
            (with(HOST_STATE, "/grad_scaler", serde_json::json!({"scale": -1.0})), "grad_scaler scale -1 is not"),
            (with(HOST_STATE, "/run_config", Value::Null), "run_config is not a table"),
            (with(SCHEDULER, "/skipped_steps", 13.into()), "scheduler.json: skipped_steps 13 is not within"),
        ];
        for (records, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), &records);
            let error = Records::read(dir.path()).unwrap_err();
            assert!(error.contains(expected), "{error}\nshould contain: {expected}");
        }
    }

    #[test]
    fn missing_empty_and_broken_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &valid());
        std::fs::write(dir.path().join(TRAINER_STATE), "").unwrap();
        assert!(Records::read(dir.path()).unwrap_err().ends_with("trainer_state.json is empty"));
        std::fs::write(dir.path().join(TRAINER_STATE), "{}").unwrap();
        assert!(Records::read(dir.path()).unwrap_err().contains("missing field"));
        std::fs::remove_file(dir.path().join(SCHEDULER)).unwrap();
        write(dir.path(), &valid()[..3]);
        assert!(Records::read(dir.path()).unwrap_err().contains("cannot read"));
    }
}
