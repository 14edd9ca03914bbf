//! What a run tells the user: log lines on the console (through `tracing`) and one JSON
//! object per log event in `output_dir/log_history.jsonl` (HF `log_history` entries).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::engine::trainer::state::TrainerState;
use anyhow::{Context, Result};

/// Writes what a run tells the user; it keeps nothing the run needs (the run's state holds
/// the log history).
pub struct Reporter {
    /// Where the log history goes; None for evaluation and prediction runs, which leave the
    /// training files alone.
    history_path: Option<PathBuf>,
    /// Opened (and emptied) at the first log event: a run that trains nothing leaves the
    /// previous run's history alone.
    history_file: Option<BufWriter<File>>,
}

impl Reporter {
    /// Writes `log_history.jsonl` in `output_dir` (which must exist), from the first event.
    pub fn create(output_dir: &Path) -> Self {
        Self { history_path: Some(output_dir.join("log_history.jsonl")), history_file: None }
    }

    /// Logs to the console only: writes no file.
    pub fn console_only() -> Self {
        Self { history_path: None, history_file: None }
    }

    /// The history file, started fresh on first use.
    fn history(&mut self) -> Result<Option<&mut BufWriter<File>>> {
        if self.history_file.is_none() {
            if let Some(path) = &self.history_path {
                let file = File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
                self.history_file = Some(BufWriter::new(file));
            }
        }
        Ok(self.history_file.as_mut())
    }

    pub fn training_starts(
        &self,
        state: &TrainerState,
        n_train: usize,
        n_eval: usize,
        updates_per_epoch: i64,
        ga: usize,
    ) {
        let epochs = state.num_train_epochs;
        let plural = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let evaluated = if n_eval == 0 { "none".to_owned() } else { n_eval.to_string() };
        tracing::info!(
            "training: {n_train} examples, {evaluated} for evaluation, {} ({} of {}), batch {} x {ga} accumulated",
            plural(state.max_steps, "optimizer step", "optimizer steps"),
            if epochs == 1.0 { "1 epoch".to_owned() } else { format!("{epochs} epochs") },
            plural(updates_per_epoch, "step", "steps"),
            state.train_batch_size,
        );
    }

    /// Writes one log event and returns it as a `log_history` entry (HF's: the logs plus
    /// `step`).
    pub fn log(&mut self, state: &TrainerState, logs: &[(String, f64)]) -> Result<serde_json::Value> {
        let mut entry = serde_json::Map::new();
        for (name, value) in logs {
            entry.insert(name.clone(), json_number(*value));
        }
        entry.insert("step".to_owned(), state.global_step.into());
        let entry = serde_json::Value::Object(entry);
        if let Some(file) = self.history()? {
            writeln!(file, "{entry}").context("cannot write log_history.jsonl")?;
            file.flush().context("cannot write log_history.jsonl")?;
        }
        let is_eval = logs.iter().any(|(n, _)| n.starts_with("eval_"));
        let text: Vec<String> =
            logs.iter().filter(|(n, _)| n != "epoch").map(|(n, v)| format!("{n} {}", show(n, *v))).collect();
        let what = if is_eval {
            "eval"
        } else if logs.iter().any(|(n, _)| n == "train_runtime") {
            "done"
        } else {
            "train"
        };
        tracing::info!(
            "{what:<5} step {}/{} epoch {:.2} | {}",
            state.global_step,
            state.max_steps,
            state.epoch,
            text.join(" | ")
        );
        Ok(entry)
    }

    /// Continues the history of a resumed run: its entries so far, in the file too.
    pub fn rewrite_history(&mut self, entries: &[serde_json::Value]) -> Result<()> {
        let Some(file) = self.history()? else { return Ok(()) };
        file.flush().context("cannot rewrite log_history.jsonl")?;
        file.get_mut().set_len(0).context("cannot rewrite log_history.jsonl")?;
        std::io::Seek::rewind(file.get_mut()).context("cannot rewrite log_history.jsonl")?;
        for entry in entries {
            writeln!(file, "{entry}").context("cannot write log_history.jsonl")?;
        }
        file.flush().context("cannot write log_history.jsonl")
    }
}

/// JSON has no NaN or infinity; HF writes them as strings in that case, and so do we.
fn json_number(value: f64) -> serde_json::Value {
    serde_json::Number::from_f64(value).map(serde_json::Value::Number).unwrap_or_else(|| value.to_string().into())
}

/// A value as a person wants to read it.
pub fn show(name: &str, value: f64) -> String {
    if name.ends_with("runtime") {
        format!("{value:.2}s")
    } else if name.ends_with("per_second") {
        format!("{value:.1}")
    } else if name == "learning_rate" {
        format!("{value:.3e}")
    } else if name == "total_flos" {
        // As HF's metrics_format: whole gigaFLOPs (2^30).
        format!("{}GF", value as u64 >> 30)
    } else if name.contains("_mem_") {
        // As metrics_format: whole MiB (negative deltas too).
        format!("{}MB", value as i64 >> 20)
    } else if name == "num_input_tokens_seen" {
        format!("{value}")
    } else {
        format!("{value:.4}")
    }
}
