//! The operator-count probe of one optimizer step, for the benchmarks (bench/op_count.py):
//! with `HOST_OP_COUNT=FILE` in the environment, the ATen operators and allocated bytes of
//! optimizer step `HOST_OP_COUNT_STEP` (3 by default, past the first steps' one-off work)
//! are written to FILE as JSON: from the step's first forward pass through the optimizer
//! update and the zeroing of the gradients, as transformers' step between its
//! `on_step_begin` and `on_step_end` callbacks.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::native::{OpCount, OpCounter};

#[derive(Debug)]
pub(super) struct OpProbe {
    step: i64,
    path: PathBuf,
    counter: Option<OpCounter>,
}

impl OpProbe {
    pub fn from_env() -> Result<Option<Self>> {
        let Some(path) = std::env::var_os("HOST_OP_COUNT") else { return Ok(None) };
        let step = match std::env::var("HOST_OP_COUNT_STEP") {
            Ok(text) => text.parse().ok().filter(|&s: &i64| s >= 1).with_context(|| {
                format!("HOST_OP_COUNT_STEP must be an optimizer step number (1 or more), not {text:?}")
            })?,
            Err(_) => 3,
        };
        Ok(Some(Self { step, path: path.into(), counter: None }))
    }

    /// Optimizer step `step` (counted from 1) begins.
    pub fn step_begins(&mut self, step: i64) -> Result<()> {
        if step == self.step && self.counter.is_none() {
            self.counter = Some(OpCounter::start().map_err(anyhow::Error::msg)?);
        }
        Ok(())
    }

    /// The update of the step that began last is done: its counts are written.
    pub fn step_ends(&mut self) -> Result<()> {
        let Some(counter) = self.counter.take() else { return Ok(()) };
        let count = counter.stop().map_err(anyhow::Error::msg)?;
        let text = serde_json::to_string_pretty(&report(self.step, &count))?;
        std::fs::write(&self.path, text).with_context(|| format!("HOST_OP_COUNT: cannot write {}", self.path.display()))
    }
}

fn report(step: i64, count: &OpCount) -> serde_json::Value {
    serde_json::json!({
        "step": step,
        "aten_ops": count.aten_ops(),
        "bytes_allocated": count.bytes_allocated,
        "allocations": count.allocations,
        "ops": count.ops,
    })
}
