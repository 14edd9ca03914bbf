//! Saving a run to a checkpoint and continuing it from one, exactly: weights, optimizer,
//! schedule, random generators, trainer and callback state, data position and the running
//! loss totals all come back, so the continuation equals the run that never stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use crate::engine::callbacks::Event;
use tch::{Device, Kind, Tensor};

use super::{Position, Trainer};
use crate::engine::checkpoint::{self, Writer};
use crate::error::InputError;
use crate::engine::optim::OptimizerState;

/// The checkpoint file of a rank's random generator states. As HF: rng_state.pth alone,
/// rng_state_{rank}.pth for each rank of a distributed run.
fn rng_state_file(rank: Option<usize>) -> String {
    match rank {
        Some(rank) => format!("rng_state_{rank}.safetensors"),
        None => "rng_state.safetensors".to_owned(),
    }
}

/// A run stopped by SIGINT or SIGTERM, after saving a checkpoint.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub checkpoint: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        write!(
            f,
            "interrupted by {name}: saved {}; continue with --resume-from-checkpoint latest",
            self.checkpoint.display()
        )
    }
}

impl std::error::Error for Interrupted {}

impl Trainer {
    /// The checkpoint folder that `resume_from_checkpoint` names.
    pub(super) fn checkpoint_to_resume(&self, spec: &str) -> Result<PathBuf> {
        if spec == "latest" {
            return checkpoint::latest(&self.output_dir());
        }
        let dir = PathBuf::from(spec);
        if !dir.is_dir() {
            return Err(InputError::new(format!(
                "resume_from_checkpoint: {spec} is not a checkpoint folder (it does not exist)"
            ))
            .into());
        }
        checkpoint::verify(&dir).map_err(|problem| InputError::new(format!("resume_from_checkpoint: {problem}")))?;
        Ok(dir)
    }

    /// Writes `output_dir/checkpoint-{global_step}`, then applies save_total_limit. In a
    /// distributed run every rank calls it (they share their totals and random generator
    /// states) and rank 0 writes.
    pub(super) fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let started = std::time::Instant::now();
        let step = self.state.global_step;
        let loss_since_log = self.loss_since_log_all_ranks()?;
        let rng = self.rng_states_of_all_ranks(step)?;
        // HF records the best checkpoint once the folder of the best step exists (or is this one).
        if let Some(best_step) = self.state.best_global_step {
            let best_dir = self.output_dir().join(format!("checkpoint-{best_step}"));
            if best_step == step || best_dir.exists() {
                self.state.best_model_checkpoint = Some(best_dir.display().to_string());
            }
        }
        if !self.is_world_zero() {
            return Ok(self.output_dir().join(format!("checkpoint-{step}")));
        }
        let mut writer = Writer::begin(&self.output_dir(), step)?;

        crate::engine::weights::save(&self.vars, &writer.path("model.safetensors"))?;
        writer.finish_file("model.safetensors")?;

        let optimizer = self.optimizer.state();
        writer.write_safetensors("optimizer.safetensors", &optimizer.tensors)?;
        writer.write_json(
            "optimizer.json",
            &serde_json::json!({ "optim": self.args.optim, "optim_args": self.args.optim_args, "scalars": optimizer.scalars }),
        )?;
        let scheduler = self.scheduler.as_ref().map(|s| s.state()).unwrap_or_default();
        writer.write_json(
            "scheduler.json",
            &serde_json::json!({ "state": scheduler, "skipped_steps": self.skipped_steps }),
        )?;

        let distributed = rng.len() > 1;
        for (rank, states) in rng.iter().enumerate() {
            writer.write_safetensors(&rng_state_file(distributed.then_some(rank)), states)?;
        }
        // One call per callback gives both its JSON state and its tensors.
        let (stateful_callbacks, callback_tensors) = self.handler.states()?;
        writer.write_json("trainer_state.json", &self.trainer_state_with(stateful_callbacks))?;
        if !callback_tensors.is_empty() {
            writer.write_safetensors("callback_tensors.safetensors", &callback_tensors)?;
        }
        writer.write_json("training_args.json", &serde_json::to_value(&self.args)?)?;
        let progress = &self.progress;
        let host_state = serde_json::json!({
            "position": { "epoch": self.position.epoch, "micro_batches_done": self.position.micro_batches_done },
            "loss_since_log": loss_since_log,
            "world_size": self.world_size(),
            "total_loss": progress.total_loss,
            "last_logged_step": progress.last_logged_step,
            "samples_seen": progress.samples_seen,
            "grad_scaler": self.scaler.as_ref().map(|s| serde_json::json!({ "scale": s.scale })),
            "loss_state": match &mut self.loss { Some(loss) => loss.state()?, None => None },
            "run_config": self.run_config,
        });
        writer.write_json("host_state.json", &host_state)?;
        let dir = writer.commit()?;
        let seconds = started.elapsed().as_secs_f64();
        let megabytes = std::fs::read_dir(&dir)
            .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum::<u64>())
            .unwrap_or(0) as f64
            / 1e6;
        tracing::info!(
            "saved {} ({megabytes:.1} MB in {seconds:.2} s, {:.0} MB/s)",
            dir.display(),
            megabytes / seconds.max(1e-9)
        );

        if let Some(limit) = self.args.save_total_limit {
            let best = self.state.best_model_checkpoint.as_ref().map(PathBuf::from);
            checkpoint::rotate(&self.output_dir(), limit, best.as_deref())?;
        }
        Ok(dir)
    }

    /// This rank's random generator states (CPU, and its CUDA device), and in a
    /// distributed run every rank's, in rank order.
    fn rng_states_of_all_ranks(&self, step: i64) -> Result<Vec<Vec<(String, Tensor)>>> {
        let mut mine = vec![("cpu".to_owned(), crate::engine::rng::state(Device::Cpu)?)];
        if let Device::Cuda(index) = self.device {
            mine.push((format!("cuda:{index}"), crate::engine::rng::state(self.device)?));
        }
        let Some((dist, _)) = &self.dist else { return Ok(vec![mine]) };
        let as_bytes: Vec<(String, Vec<u8>)> =
            mine.iter().map(|(name, t)| Ok((name.clone(), Vec::<u8>::try_from(t)?))).collect::<Result<_>>()?;
        let all = dist.gather_bytes(&format!("rng/{step}"), &serde_json::to_vec(&as_bytes)?)?;
        all.iter()
            .map(|bytes| {
                let states: Vec<(String, Vec<u8>)> = serde_json::from_slice(bytes)?;
                Ok(states.into_iter().map(|(name, b)| (name, Tensor::from_slice(&b))).collect())
            })
            .collect()
    }

    /// Loads everything a checkpoint holds into this trainer.
    pub(super) fn restore(&mut self, dir: &Path) -> Result<()> {
        let shown = dir.display();
        crate::engine::weights::load_into(&self.vars, &dir.join("model.safetensors"))
            .map_err(|e| InputError::new(format!("resume_from_checkpoint: {shown}: {e:#}")))?;
        let host = checkpoint::read_json(dir, "host_state.json")?;
        let saved_world = host["world_size"].as_u64().unwrap_or(1) as usize;
        if saved_world != self.world_size() {
            return Err(InputError::new(format!(
                "resume_from_checkpoint: {shown} was written by {saved_world} rank(s), this run has {}: resume with the same number of ranks (WORLD_SIZE, --nproc-per-node)",
                self.world_size()
            ))
            .into());
        }

        let saved_optimizer = checkpoint::read_json(dir, "optimizer.json")?;
        if saved_optimizer["optim"].as_str() != Some(self.args.optim.as_str()) {
            return Err(InputError::new(format!(
                "resume_from_checkpoint: {shown} was made with optim {}, this run uses {}",
                saved_optimizer["optim"], self.args.optim
            ))
            .into());
        }
        let tensors = Tensor::read_safetensors(dir.join("optimizer.safetensors"))
            .with_context(|| format!("cannot read {shown}/optimizer.safetensors"))?
            .into_iter()
            .map(|(n, t)| (n, t.to_device(self.device)))
            .collect();
        let state = OptimizerState { tensors, scalars: saved_optimizer["scalars"].clone() };
        self.optimizer
            .load_state(&state)
            .map_err(|e| InputError::new(format!("resume_from_checkpoint: {shown}: {e}")))?;

        let scheduler = checkpoint::read_json(dir, "scheduler.json")?;
        if let Some(s) = &mut self.scheduler {
            s.load_state(&scheduler["state"])
                .map_err(|e| InputError::new(format!("resume_from_checkpoint: {shown}: {e}")))?;
        }
        self.skipped_steps = scheduler["skipped_steps"].as_i64().unwrap_or(0);

        let rng_file = rng_state_file(self.dist.as_ref().map(|(dist, _)| dist.rank()));
        let rng_states = Tensor::read_safetensors(dir.join(&rng_file))
            .map_err(|e| InputError::new(format!("resume_from_checkpoint: cannot read {shown}/{rng_file}: {e}")))?;
        for (name, state) in rng_states {
            let device =
                if name == "cpu" { Some(Device::Cpu) } else { crate::engine::device::parse_device(&name).ok().flatten() };
            match device {
                Some(device) if device == Device::Cpu || device == self.device => {
                    crate::engine::rng::set_state(device, &state)?
                }
                _ => tracing::warn!("not restoring the {name} random generator: this run trains on {:?}", self.device),
            }
        }

        let trainer_state = checkpoint::read_json(dir, "trainer_state.json")?;
        let s = &mut self.state;
        s.global_step = trainer_state["global_step"].as_i64().unwrap_or(0);
        s.epoch = trainer_state["epoch"].as_f64().unwrap_or(0.0);
        s.best_metric = trainer_state["best_metric"].as_f64();
        s.best_global_step = trainer_state["best_global_step"].as_i64();
        s.best_model_checkpoint = trainer_state["best_model_checkpoint"].as_str().map(str::to_owned);
        s.total_flos = trainer_state["total_flos"].as_f64().unwrap_or(0.0);
        let history = trainer_state["log_history"].as_array().cloned().unwrap_or_default();
        self.reporter.restore_history(history)?;
        let callback_tensors = match dir.join("callback_tensors.safetensors") {
            path if path.exists() => {
                Tensor::read_safetensors(&path)?.into_iter().map(|(n, t)| (n, t.to_device(self.device))).collect()
            }
            _ => Vec::new(),
        };
        self.handler.restore_states(&trainer_state["stateful_callbacks"], &callback_tensors)?;

        self.position = Position {
            epoch: host["position"]["epoch"].as_i64().unwrap_or(0),
            micro_batches_done: host["position"]["micro_batches_done"].as_u64().unwrap_or(0) as usize,
        };
        // The saved total is every rank's: rank 0 carries it on.
        let unlogged =
            if self.state.is_world_process_zero { host["loss_since_log"].as_f64().unwrap_or(0.0) } else { 0.0 };
        let progress = &mut self.progress;
        progress.loss_since_log = Tensor::from(unlogged as f32).to_device(self.device).to_kind(Kind::Float);
        progress.total_loss = host["total_loss"].as_f64().unwrap_or(0.0);
        progress.last_logged_step = host["last_logged_step"].as_i64().unwrap_or(0);
        if let (Some(scaler), Some(scale)) = (&mut self.scaler, host["grad_scaler"]["scale"].as_f64()) {
            scaler.scale = scale;
        }
        if let (Some(loss), Some(state)) = (&mut self.loss, host.get("loss_state").filter(|s| !s.is_null())) {
            loss.load_state(state)?;
        }
        Ok(())
    }

    /// HF `_determine_best_metric`: whether `metrics` improve on the best so far.
    pub(super) fn determine_best_metric(&mut self, metrics: &[(String, f64)]) -> anyhow::Result<bool> {
        let Some((key, greater)) = self.args.best_metric() else { return Ok(false) };
        let Some(value) = metrics.iter().find(|(n, _)| *n == key).map(|(_, v)| *v) else {
            // As HF: a best-model metric that evaluation does not give is an error.
            let names: Vec<&str> = metrics.iter().map(|(n, _)| n.as_str()).collect();
            return Err(crate::error::InputError::new(format!(
                "metric_for_best_model '{key}' is not among this model's evaluation metrics ({}); choose one of them",
                names.join(", ")
            ))
            .into());
        };
        let better = match self.state.best_metric {
            None => true,
            Some(best) => {
                if greater {
                    value > best
                } else {
                    value < best
                }
            }
        };
        if better {
            self.state.best_metric = Some(value);
            self.state.best_global_step = Some(self.state.global_step);
        }
        Ok(better)
    }

    /// load_best_model_at_end: the weights of the best checkpoint.
    pub(super) fn load_best_model(&mut self) -> Result<()> {
        // Rank 0 saw the checkpoints written; the others follow its answer (their disks
        // may not hold the checkpoints on other machines).
        let best = self.state.best_model_checkpoint.clone().filter(|_| self.is_world_zero());
        let has_best = self.sum_across_ranks(best.is_some() as u8 as f64, "sharing the best model")? > 0.0;
        if !has_best {
            tracing::warn!("load_best_model_at_end: no best checkpoint was saved; keeping the final weights");
            return Ok(());
        }
        if let Some(best) = best {
            tracing::info!("loading the best model from {best} (score: {:?})", self.state.best_metric);
            crate::engine::weights::load_into(&self.vars, &Path::new(&best).join("model.safetensors"))?;
        }
        self.share_rank_zero_weights()
    }

    /// After an optimizer step: if SIGINT or SIGTERM came, save a checkpoint and stop.
    pub(super) fn stop_if_signalled(&mut self) -> Result<()> {
        let signal = self.stop_requested();
        if signal == 0 {
            return Ok(());
        }
        crate::engine::progress_bar::finish();
        let checkpoint = self.save_checkpoint()?;
        self.fire(Event::Save, &[])?;
        Err(Interrupted { signal: signal as i32, checkpoint }.into())
    }
}
