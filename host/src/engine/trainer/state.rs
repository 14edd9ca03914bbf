//! The state of a run: Hugging Face's `TrainerState` (what trainer_state.json holds and
//! callbacks see), where the data stands, and the running totals that logs are made of.
//! Everything here is plain data that a checkpoint saves and restores.

use serde::{Deserialize, Serialize};

/// Hugging Face's `TrainerState`, with its field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Fractional epoch: 1.5 is half way through the second epoch.
    pub epoch: f64,
    /// Optimizer steps taken so far.
    pub global_step: i64,
    pub max_steps: i64,
    pub logging_steps: i64,
    pub eval_steps: i64,
    pub save_steps: i64,
    pub train_batch_size: i64,
    pub num_train_epochs: f64,
    pub num_input_tokens_seen: i64,
    pub total_flos: f64,
    pub best_metric: Option<f64>,
    pub best_global_step: Option<i64>,
    pub best_model_checkpoint: Option<String>,
    pub is_local_process_zero: bool,
    pub is_world_process_zero: bool,
    pub is_hyper_param_search: bool,
}

/// Where the data stands: the epoch, and the micro-batches of it already trained on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: i64,
    pub micro_batches_done: usize,
}

/// The run's loss and sample totals, as of the last optimizer step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// The sum of the logged loss averages times their steps (HF's `_total_loss_scalar`).
    pub total_loss: f64,
    /// The step of the last log event with a training loss.
    pub last_logged_step: i64,
    /// Training examples seen by this rank.
    pub samples_seen: usize,
    /// Optimizer steps whose update was skipped (fp16 overflow, or a callback asked): the
    /// schedule does not advance on them, as in HF.
    pub skipped_steps: i64,
}

/// Everything about a run that changes as it trains and that a checkpoint carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub state: TrainerState,
    /// Every log event so far (HF `state.log_history`): the logs plus `step`.
    pub log_history: Vec<serde_json::Value>,
    pub position: Position,
    pub totals: Totals,
}

impl RunState {
    /// The learning-rate schedule's step: optimizer steps that updated the weights.
    pub fn schedule_step(&self) -> i64 {
        self.state.global_step - self.totals.skipped_steps
    }
}
