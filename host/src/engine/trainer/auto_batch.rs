//! auto_find_batch_size (HF's, through accelerate's find_executable_batch_size, and
//! Composer's automatic microbatching): a training step that runs out of memory is undone
//! and run again with smaller micro-batches and more of them, so that it still covers the
//! same examples.

use anyhow::Result;
use tch::Tensor;

use super::Trainer;
use crate::engine::libtorch;

/// Test builds only (the `fault-injection` feature): HOST_FAULT_OOM_ABOVE_BATCH=N makes a
/// micro-batch of more than N examples fail as libtorch's CPU allocator does.
#[cfg(feature = "fault-injection")]
pub(super) fn simulated_out_of_memory(batch: i64) -> Result<()> {
    let limit = std::env::var("HOST_FAULT_OOM_ABOVE_BATCH").ok().and_then(|v| v.parse::<i64>().ok());
    match limit {
        Some(limit) if batch > limit => Err(libtorch::Failed(format!(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate {} bytes",
            batch * 1_000_000
        ))
        .into()),
        _ => Ok(()),
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(super) fn simulated_out_of_memory(_batch: i64) -> Result<()> {
    Ok(())
}

/// A step's bookkeeping before its first micro-batch (see `retry_smaller`).
pub(super) struct StepSnapshot {
    samples_seen: usize,
    micro_batches_done: usize,
    since_log: Tensor,
    step_nonfinite: Tensor,
    current_flos: f64,
    current_tokens: i64,
}

/// The next micro-batch size to try after running out of memory: the largest that is at
/// most half of `batch` and divides the step's examples, so gradient accumulation makes up
/// the rest exactly; `None` at 1.
pub(super) fn smaller_batch(batch: i64, accumulation: i64) -> Option<i64> {
    let examples = batch * accumulation;
    (1..=batch / 2).rev().find(|size| examples % size == 0)
}

impl Trainer {
    /// What a step's micro-batches change before its update, to undo for a retry.
    /// `None` without auto_find_batch_size: nothing is ever undone, so nothing is copied.
    pub(super) fn step_snapshot(&self) -> Option<StepSnapshot> {
        if !self.config.args.auto_find_batch_size {
            return None;
        }
        Some(StepSnapshot {
            samples_seen: self.run.totals.samples_seen,
            micro_batches_done: self.run.position.micro_batches_done,
            since_log: self.meter.since_log.copy(),
            step_nonfinite: self.meter.step_nonfinite.copy(),
            current_flos: self.meter.current_flos,
            current_tokens: self.meter.current_tokens,
        })
    }

    /// auto_find_batch_size (HF's, through accelerate's find_executable_batch_size): a step
    /// that ran out of memory runs again with smaller micro-batches and more of them, so
    /// the step still covers the same examples. Any other error, or no smaller size,
    /// stays an error.
    /// Returns the micro-batch size that failed; the new one is in the arguments.
    pub(super) fn retry_smaller(&mut self, error: anyhow::Error, before: Option<StepSnapshot>) -> Result<usize> {
        let args = &self.config.args;
        let out_of_memory = error.downcast_ref::<libtorch::OutOfMemory>().is_some();
        let Some(before) = before.filter(|_| out_of_memory) else {
            return Err(error);
        };
        let (batch, accumulation) = (args.per_device_train_batch_size, args.gradient_accumulation_steps);
        let Some(smaller) = smaller_batch(batch, accumulation) else {
            return Err(error.context("auto_find_batch_size: per_device_train_batch_size 1 still does not fit"));
        };
        let examples = batch * accumulation;
        tracing::warn!(
            "auto_find_batch_size: out of memory at per_device_train_batch_size {batch}; the step runs again with {smaller} and gradient_accumulation_steps {} (the same {examples} examples a step)",
            examples / smaller
        );
        self.optimizer.zero_grad().map_err(libtorch::Failed)?;
        self.run.totals.samples_seen = before.samples_seen;
        self.run.position.micro_batches_done = before.micro_batches_done;
        self.meter.since_log = before.since_log;
        self.meter.step_nonfinite = before.step_nonfinite;
        self.meter.current_flos = before.current_flos;
        self.meter.current_tokens = before.current_tokens;
        let args = &mut self.config.args;
        (args.per_device_train_batch_size, args.gradient_accumulation_steps) = (smaller, examples / smaller);
        self.run.state.train_batch_size = smaller;
        Ok(batch as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::smaller_batch;

    #[test]
    fn smaller_micro_batches_halve_at_least_and_keep_the_step_whole() {
        assert_eq!(smaller_batch(32, 1), Some(16));
        assert_eq!(smaller_batch(12, 2), Some(6));
        // 6 x 1: 3 divides 6; 5 x 1: only 1 divides 5 below half.
        assert_eq!(smaller_batch(6, 1), Some(3));
        assert_eq!(smaller_batch(5, 1), Some(1));
        assert_eq!(smaller_batch(5, 2), Some(2));
        assert_eq!(smaller_batch(1, 4), None);
    }
}
