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
