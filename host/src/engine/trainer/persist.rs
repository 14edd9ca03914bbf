//! Saving a run to a checkpoint and continuing it from one, exactly: weights, optimizer,
//! schedule, random generators, trainer and callback state, data position and the running
//! loss totals all come back, so the continuation equals the run that never stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use super::state::Totals;
use super::{open_checkpoint, Trainer};
use crate::engine::callbacks::Event;
use crate::engine::checkpoint::records::{
    HostStateRecord, OptimizerRecord, Records, ScalerRecord, SchedulerRecord, TrainerStateExtras, TrainerStateRecord,
    HOST_STATE, OPTIMIZER, SCHEDULER, TRAINER_STATE, TRAINING_ARGS,
};
use crate::engine::checkpoint::{self, Writer};
use crate::engine::device::{device_name, device_named};
use crate::engine::models::pretrained::lora;
use crate::engine::optim::{OptimizerKind, OptimizerState};
use crate::engine::{progress_bar, rng};
use crate::error::{InputError, Interrupted};

/// The checkpoint file of a rank's random generator states. As HF: rng_state.pth alone,
/// rng_state_{rank}.pth for each rank of a distributed run.
fn rng_state_file(rank: Option<usize>) -> String {
    match rank {
        Some(rank) => format!("rng_state_{rank}.safetensors"),
        None => "rng_state.safetensors".to_owned(),
    }
}

impl Trainer {
    /// Writes `output_dir/checkpoint-{global_step}`, then applies save_total_limit. In a
    /// distributed run every rank calls it (they share their totals and random generator
    /// states) and rank 0 writes.
    pub(super) fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let started = std::time::Instant::now();
        let step = self.run.state.global_step;
        let loss_since_log = self.loss_since_log_all_ranks()?;
        self.store_flos()?;
        let rng = self.gather_rng_states(self.rng_states()?, step)?;
        // HF records the best checkpoint once the folder of the best step exists (or is this one).
        if let Some(best_step) = self.run.state.best_global_step {
            let best_dir = self.output_dir().join(format!("checkpoint-{best_step}"));
            if best_step == step || best_dir.exists() {
                self.run.state.best_model_checkpoint = Some(best_dir.display().to_string());
            }
        }
        if !self.is_world_zero() {
            return Ok(self.output_dir().join(format!("checkpoint-{step}")));
        }
        let mut writer = Writer::begin(&self.output_dir(), step)?;
        self.write_model_files(&mut writer)?;
        // save_only_model: the model and the records, nothing to resume with.
        if !self.config.args.save_only_model {
            self.write_resume_files(&mut writer, &rng)?;
        }
        self.write_state_files(&mut writer, loss_since_log)?;
        let dir = writer.commit()?;
        crate::fatal::checkpoint_saved(&dir);
        log_saved(&dir, started.elapsed().as_secs_f64());
        if let Some(limit) = self.config.args.save_total_limit {
            let best = self.run.state.best_model_checkpoint.as_ref().map(PathBuf::from);
            checkpoint::rotate(&self.output_dir(), limit, best.as_deref())?;
        }
        Ok(dir)
    }

    /// What only resuming needs: the optimizer's state, the scheduler's and every rank's
    /// random generator states.
    fn write_resume_files(&mut self, writer: &mut Writer, rng: &[Vec<(String, Tensor)>]) -> Result<()> {
        let optimizer = self.optimizer.state().map_err(|e| anyhow::anyhow!("saving the optimizer state: {e}"))?;
        writer.write_safetensors("optimizer.safetensors", &optimizer.tensors)?;
        let args = &self.config.args;
        let record = OptimizerRecord {
            optim: args.optim.clone(),
            optim_args: args.optim_args.clone(),
            scalars: optimizer.scalars,
        };
        writer.write_json(OPTIMIZER, &serde_json::to_value(record)?)?;
        let state = self.schedule_state()?;
        let record = SchedulerRecord { state, skipped_steps: self.run.totals.skipped_steps };
        writer.write_json(SCHEDULER, &serde_json::to_value(record)?)?;
        let distributed = rng.len() > 1;
        for (rank, states) in rng.iter().enumerate() {
            writer.write_safetensors(&rng_state_file(distributed.then_some(rank)), states)?;
        }
        Ok(())
    }

    /// The records every checkpoint has: trainer_state.json (with the callbacks' states
    /// and tensors), the arguments and host_state.json.
    fn write_state_files(&mut self, writer: &mut Writer, loss_since_log: f64) -> Result<()> {
        // One call per callback gives both its JSON state and its tensors.
        let (trainer_state, callback_tensors) = self.trainer_state_record()?;
        writer.write_json(TRAINER_STATE, &serde_json::to_value(trainer_state)?)?;
        if !callback_tensors.is_empty() {
            writer.write_safetensors("callback_tensors.safetensors", &callback_tensors)?;
        }
        writer.write_json(TRAINING_ARGS, &serde_json::to_value(&self.config.args)?)?;
        let host_state = self.host_state_record(loss_since_log)?;
        writer.write_json(HOST_STATE, &serde_json::to_value(host_state)?)?;
        Ok(())
    }

    /// If `dir` was saved with save_only_model, the error that says it cannot resume.
    fn refuse_model_only(dir: &Path) -> Result<(), InputError> {
        if dir.join(OPTIMIZER).exists() || !dir.join(TRAINING_ARGS).exists() {
            return Ok(());
        }
        Err(InputError::new(format!(
            "resume_from_checkpoint: {} was saved with save_only_model (the model alone, without optimizer, scheduler or random state), so training cannot resume from it; start a new run from its weights (model_name_or_path, or init_weights with its model.safetensors)",
            dir.display()
        )))
    }

    /// trainer_state.json as HF writes it (with the callbacks' states), and the tensors of
    /// the callbacks' states.
    pub fn trainer_state_record(&mut self) -> Result<(TrainerStateRecord, Vec<(String, Tensor)>)> {
        let (stateful_callbacks, tensors) = self.callbacks.states()?;
        let extras = TrainerStateExtras {
            log_history: self.run.log_history.clone(),
            stateful_callbacks,
            trial_name: None,
            trial_params: None,
        };
        let record = TrainerStateRecord { state: self.run.state.clone(), extras };
        Ok((record, tensors))
    }

    /// host_state.json: the data position, the totals, the loss scale, the loss plugin's
    /// state and the run's configuration.
    fn host_state_record(&mut self, loss_since_log: f64) -> Result<HostStateRecord> {
        let Totals { total_loss, last_logged_step, samples_seen, .. } = self.run.totals;
        Ok(HostStateRecord {
            position: self.run.position,
            loss_since_log,
            world_size: self.world_size(),
            total_loss,
            last_logged_step,
            samples_seen,
            grad_scaler: self.scaler.as_ref().map(|s| ScalerRecord { scale: s.scale }),
            loss_state: self.loss.state()?,
            run_config: serde_json::to_value(self.config.to_table()?)?,
        })
    }

    /// This rank's random generator states: the CPU's, and its CUDA device's.
    fn rng_states(&self) -> Result<Vec<(String, Tensor)>> {
        let mut mine = vec![(device_name(Device::Cpu), rng::state(Device::Cpu)?)];
        if self.device.is_cuda() {
            mine.push((device_name(self.device), rng::state(self.device)?));
        }
        Ok(mine)
    }

    /// Continues from the checkpoint that `resume_from_checkpoint` names (`latest`: the
    /// newest sound one in output_dir). Returns false, having changed nothing, when the
    /// checkpoint is already at the run's last step.
    pub(super) fn resume(&mut self, spec: &str) -> Result<bool> {
        let newest = checkpoint::list(&self.output_dir()).pop().map(|(_, dir)| dir);
        let named = if spec == "latest" { newest } else { Some(PathBuf::from(spec)) };
        if let Some(dir) = named {
            Self::refuse_model_only(&dir)?;
        }
        let (dir, records) = if spec == "latest" {
            let (dir, records) = checkpoint::latest(&self.output_dir(), open_checkpoint)?;
            (dir, Some(records))
        } else {
            let dir = PathBuf::from(spec);
            if !dir.is_dir() {
                return Err(InputError::new(format!(
                    "resume_from_checkpoint: {spec} {}; give a checkpoint folder (output_dir/checkpoint-N) or latest",
                    crate::error::what_is_at(&dir)
                ))
                .into());
            }
            checkpoint::verify(&dir)
                .map_err(|problem| InputError::new(format!("resume_from_checkpoint: {problem}")))?;
            (dir, None)
        };
        // The weights first: a checkpoint of another model is named as such.
        self.load_weights(&dir, "resume_from_checkpoint")?;
        let records = match records {
            Some(records) => records,
            None => {
                Records::read(&dir).map_err(|problem| InputError::new(format!("resume_from_checkpoint: {problem}")))?
            }
        };
        let (step, max_steps) = (records.trainer_state.state.global_step, self.run.state.max_steps);
        if step >= max_steps && self.results_written_at(step) {
            tracing::info!(
                "{} is at step {step} of {max_steps}: training is complete and its results are written; nothing to do (to train on, raise max_steps or num_train_epochs)",
                dir.display()
            );
            return Ok(false);
        }
        self.restore(&dir, records)?;
        tracing::info!(
            "resumed from {} at step {} (epoch {}, {} micro-batches into it)",
            dir.display(),
            self.run.state.global_step,
            self.run.position.epoch,
            self.run.position.micro_batches_done
        );
        Ok(true)
    }

    /// Whether output_dir holds the final results of a run that ended at `step` (a run
    /// killed after its last checkpoint has none: resuming it writes them).
    fn results_written_at(&self, step: i64) -> bool {
        let output = self.output_dir();
        let state: Option<serde_json::Value> =
            std::fs::read_to_string(output.join("trainer_state.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
        let state_step = state.as_ref().and_then(|s| s["global_step"].as_i64());
        state_step == Some(step)
            && (output.join("model.safetensors").is_file() || output.join(lora::ADAPTER_WEIGHTS).is_file())
            && output.join("all_results.json").is_file()
    }

    /// Loads everything else a checkpoint holds into this trainer.
    fn restore(&mut self, dir: &Path, records: Records) -> Result<()> {
        let shown = dir.display();
        let refuse = |problem: String| InputError::new(format!("resume_from_checkpoint: {shown}: {problem}"));
        let Records { trainer_state, host_state: host, optimizer, scheduler } = records;
        if host.world_size != self.world_size() {
            return Err(InputError::new(format!(
                "resume_from_checkpoint: {shown} was written by {} rank(s), this run has {}: resume with the same number of ranks (WORLD_SIZE, --nproc-per-node)",
                host.world_size,
                self.world_size()
            ))
            .into());
        }
        self.check_position(dir, &host)?;

        let saved_kind = OptimizerKind::from_name(&optimizer.optim);
        let same_optimizer = match self.config.optimizer.kind() {
            Some(kind) => saved_kind == Some(kind),
            None => optimizer.optim == self.config.args.optim,
        };
        if !same_optimizer {
            return Err(InputError::new(format!(
                "resume_from_checkpoint: {shown} was made with optim {}, this run uses {}",
                optimizer.optim, self.config.args.optim
            ))
            .into());
        }
        let tensors = Tensor::read_safetensors(dir.join("optimizer.safetensors"))
            .with_context(|| format!("cannot read {shown}/optimizer.safetensors"))?
            .into_iter()
            .map(|(n, t)| (n, t.to_device(self.device)))
            .collect();
        let state = OptimizerState { tensors, scalars: optimizer.scalars };
        self.optimizer.load_state(&state).map_err(refuse)?;
        self.load_schedule_state(&scheduler.state).map_err(|e| refuse(format!("{e:#}")))?;
        self.restore_rng_states(dir)?;
        self.restore_trainer_state(dir, trainer_state)?;

        self.run.position = host.position;
        // The saved total is every rank's: rank 0 carries it on.
        let unlogged = if self.is_world_zero() { host.loss_since_log } else { 0.0 };
        self.meter.since_log = Tensor::from(unlogged as f32).to_device(self.device).to_kind(Kind::Float);
        self.run.totals = Totals {
            total_loss: host.total_loss,
            last_logged_step: host.last_logged_step,
            samples_seen: self.run.totals.samples_seen,
            skipped_steps: scheduler.skipped_steps,
        };
        if let (Some(scaler), Some(saved)) = (&mut self.scaler, host.grad_scaler) {
            scaler.scale = saved.scale;
        }
        if let Some(state) = &host.loss_state {
            self.loss.load_state(state)?;
        }
        Ok(())
    }

    /// The checkpoint's data position must exist in this run's plan (the same data and
    /// batch size give the same epochs).
    fn check_position(&self, dir: &Path, host: &HostStateRecord) -> Result<()> {
        let (epochs, batches) = (self.run.state.num_train_epochs as i64, self.batches_per_epoch());
        let position = host.position;
        if position.epoch > epochs || position.micro_batches_done > batches {
            return Err(InputError::new(format!(
                "resume_from_checkpoint: {}: its data position (epoch {}, micro-batch {}) is beyond this run's {epochs} epochs of {batches} micro-batches; resume with the data and batch size it was made with",
                dir.display(),
                position.epoch,
                position.micro_batches_done
            ))
            .into());
        }
        Ok(())
    }

    fn restore_rng_states(&self, dir: &Path) -> Result<()> {
        let rng_file = rng_state_file(self.dist.as_ref().map(|dp| dp.rank()));
        let states = Tensor::read_safetensors(dir.join(&rng_file)).map_err(|e| {
            InputError::new(format!("resume_from_checkpoint: cannot read {}/{rng_file}: {e}", dir.display()))
        })?;
        for (name, state) in states {
            match device_named(&name) {
                Some(device) if device == Device::Cpu || device == self.device => rng::set_state(device, &state)?,
                _ => tracing::warn!("not restoring the {name} random generator: this run trains on {:?}", self.device),
            }
        }
        Ok(())
    }

    /// HF's TrainerState (the step, the best metric, the history) and the callbacks' states.
    fn restore_trainer_state(&mut self, dir: &Path, record: TrainerStateRecord) -> Result<()> {
        let saved = record.state;
        let state = &mut self.run.state;
        state.global_step = saved.global_step;
        state.epoch = saved.epoch;
        state.best_metric = saved.best_metric;
        state.best_global_step = saved.best_global_step;
        state.best_model_checkpoint = saved.best_model_checkpoint;
        state.total_flos = saved.total_flos;
        let extras = record.extras;
        self.reporter.rewrite_history(&extras.log_history)?;
        self.last_eval = last_evaluation(&extras.log_history);
        self.run.log_history = extras.log_history;
        let callback_tensors = match dir.join("callback_tensors.safetensors") {
            path if path.exists() => {
                Tensor::read_safetensors(&path)?.into_iter().map(|(n, t)| (n, t.to_device(self.device))).collect()
            }
            _ => Vec::new(),
        };
        self.callbacks.restore_states(&serde_json::Value::Object(extras.stateful_callbacks), &callback_tensors)
    }

    /// load_best_model_at_end: the weights of the best checkpoint; true when they were
    /// loaded.
    pub(super) fn load_best_model(&mut self) -> Result<bool> {
        // Rank 0 saw the checkpoints written; the others follow its answer (their disks
        // may not hold the checkpoints on other machines).
        let best = self.run.state.best_model_checkpoint.clone().filter(|_| self.is_world_zero());
        let has_best = self.sum_across_ranks(best.is_some() as u8 as f64, "sharing the best model")? > 0.0;
        if !has_best {
            tracing::warn!("load_best_model_at_end: no best checkpoint was saved; keeping the final weights");
            return Ok(false);
        }
        if let Some(best) = best {
            let score = self.run.state.best_metric.map_or("unknown".to_owned(), |s| s.to_string());
            tracing::info!("loading the best model from {best} (score: {score})");
            self.load_weights(Path::new(&best), "load_best_model_at_end")?;
        }
        self.share_rank_zero_weights()?;
        Ok(true)
    }

    /// After an optimizer step: if SIGINT or SIGTERM came, save a checkpoint and stop.
    pub(super) fn stop_if_signalled(&mut self) -> Result<()> {
        let signal = self.stop_requested();
        if signal == 0 {
            return Ok(());
        }
        progress_bar::finish();
        let checkpoint = self.save_checkpoint()?;
        self.fire(Event::Save, &[])?;
        Err(Interrupted { signal: signal as i32, checkpoint: Some(checkpoint) }.into())
    }
}

/// The metrics of the last evaluation in a log history (for the results of a resumed run
/// that does not evaluate again).
fn last_evaluation(history: &[serde_json::Value]) -> Option<Vec<(String, f64)>> {
    evaluation_where(history, |_| true)
}

/// The metrics of the last evaluation at optimizer step `step` in a log history.
pub(super) fn evaluation_at(history: &[serde_json::Value], step: i64) -> Option<Vec<(String, f64)>> {
    evaluation_where(history, |entry| entry.get("step").and_then(serde_json::Value::as_i64) == Some(step))
}

fn evaluation_where(
    history: &[serde_json::Value],
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Option<Vec<(String, f64)>> {
    let is_evaluation = |e: &serde_json::Value| e.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with("eval_")));
    let entry = history.iter().rev().find(|e| is_evaluation(e) && wanted(e))?;
    let metrics = entry.as_object()?.iter().filter(|(k, _)| *k != "step");
    Some(metrics.filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect())
}

/// One line on the console: where, how large, how fast.
fn log_saved(dir: &Path, seconds: f64) {
    let megabytes = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum::<u64>())
        .unwrap_or(0) as f64
        / 1e6;
    tracing::info!(
        "saved {} ({megabytes:.1} MB in {seconds:.2} s, {:.0} MB/s)",
        dir.display(),
        megabytes / seconds.max(1e-9)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_evaluation_of_a_history_is_its_last_entry_with_eval_metrics() {
        let history = vec![
            serde_json::json!({"eval_loss": 0.5, "epoch": 1.0, "step": 10}),
            serde_json::json!({"loss": 0.4, "epoch": 1.5, "step": 15}),
            serde_json::json!({"eval_loss": 0.3, "eval_accuracy": 0.9, "epoch": 2.0, "step": 20}),
            serde_json::json!({"train_loss": 0.35, "epoch": 2.0, "step": 20}),
        ];
        let mut metrics = last_evaluation(&history).unwrap();
        metrics.sort_by(|a, b| a.0.cmp(&b.0));
        let expected = [("epoch", 2.0), ("eval_accuracy", 0.9), ("eval_loss", 0.3)].map(|(k, v)| (k.to_owned(), v));
        assert_eq!(metrics, expected);
        assert!(last_evaluation(&history[1..2]).is_none());
    }
}
