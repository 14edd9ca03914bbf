//! The training loop, evaluation and logging, in Hugging Face Trainer's order of events.

use std::time::Instant;

use anyhow::{Context, Result};
use crate::engine::callbacks::Event;
use plugin_api::Tensors;
use state::TrainerState;
use tch::nn;
use tch::{Device, Kind, Reduction, Tensor};

use crate::config::arguments::{IntervalStrategy, TrainingArguments};
use crate::engine::callbacks::CallbackHandler;
use crate::engine::data::{self, Batch, Dataset};
use crate::engine::distributed::{Distributed, GradientBuckets};
use crate::engine::models::{Model, Outputs, Shape, Task};
use crate::engine::optim::{self, AdamSettings, Optimizer, Param};
use crate::plugins::PluginLoss;
use crate::engine::precision::{Autocast, GradScaler, Precision};
use crate::engine::report::Reporter;
use crate::engine::optim::schedule::Scheduler;

mod persist;
pub mod state;
mod data_parallel;

pub use persist::Interrupted;

/// Everything one training run needs.
pub struct Trainer {
    args: TrainingArguments,
    device: Device,
    vars: nn::VarStore,
    model: Box<dyn Model>,
    /// The model's task and number of classes (or vocabulary).
    shape: Shape,
    optimizer: Box<dyn Optimizer>,
    /// Made when training starts, once the number of steps is known.
    scheduler: Option<Scheduler>,
    precision: Precision,
    /// For fp16: loss scaling, and the optimizer steps it skipped (the schedule does not
    /// advance on those, as in HF).
    scaler: Option<GradScaler>,
    skipped_steps: i64,
    loss: Option<PluginLoss>,
    handler: CallbackHandler,
    train: Dataset,
    eval: Dataset,
    pub state: TrainerState,
    reporter: Reporter,
    /// Running loss totals between log events.
    progress: Progress,
    /// Where the data stands: the epoch, and the micro-batches of it already trained on.
    position: Position,
    /// Whether the last evaluation gave a new best metric (for save_strategy=best).
    new_best: bool,
    /// The resolved run configuration, kept in checkpoints (plugins, their config).
    run_config: serde_json::Value,
    /// Set (to the signal number) when SIGINT or SIGTERM asks the run to stop.
    stop_signal: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// A distributed run's process group, and the gradient buckets it all-reduces.
    dist: Option<(Distributed, GradientBuckets)>,
    /// The stop signal all ranks agreed on (distributed runs).
    agreed_signal: usize,
}

/// The data position of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: i64,
    pub micro_batches_done: usize,
}

/// What a trainer is built from: the run's arguments, data and plugins, and where it
/// reports. Named fields, so a call site says which is which.
pub struct TrainerSetup {
    pub args: TrainingArguments,
    pub device: Device,
    pub train: Dataset,
    pub eval: Dataset,
    /// The loss plugin's component; None for the built-in cross entropy.
    pub loss: Option<PluginLoss>,
    pub handler: CallbackHandler,
    pub reporter: Reporter,
    /// The resolved run configuration, kept in checkpoints.
    pub run_config: serde_json::Value,
    /// Set (to the signal number) when SIGINT or SIGTERM asks the run to stop.
    pub stop_signal: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The process group of a distributed run.
    pub dist: Option<Distributed>,
}

/// What a finished run reports.
pub struct Outcome {
    pub train_metrics: Vec<(String, f64)>,
    pub eval_metrics: Option<Vec<(String, f64)>>,
}

impl Trainer {
    pub fn new(setup: TrainerSetup) -> Result<Self> {
        let TrainerSetup { args, device, train, eval, loss, handler, reporter, run_config, stop_signal, dist } = setup;
        let precision = Precision::choose(args.bf16, args.fp16, device)?;
        if let Some(tf32) = args.tf32 {
            if tf32 && !device.is_cuda() {
                return Err(
                    crate::error::InputError::new("tf32 needs a CUDA device (it enables TF32 tensor cores)").into()
                );
            }
            crate::engine::precision::set_tf32(tf32)?;
        }
        tch::manual_seed(args.seed as i64);
        let vars = nn::VarStore::new(device);
        let (model, shape) = crate::engine::models::build(&args, &vars.root(), &train, &eval)?;
        if loss.is_none() && train.labels().is_floating_point() {
            return Err(crate::error::InputError::new(
                "the labels are not whole numbers (regression or multi-label targets): the built-in cross entropy needs class ids; load a loss plugin such as mse, huber or bce_with_logits",
            )
            .into());
        }
        if let Some(path) = &args.init_weights {
            crate::engine::weights::load_into(&vars, std::path::Path::new(path))?;
        }
        let optimizer = build_optimizer(&args, &vars)?;
        let dist = match dist {
            Some(dist) => {
                // Every rank starts from rank 0's weights, as DDP.
                data_parallel::broadcast_parameters(&dist, optimizer.params(), "the parameter broadcast")?;
                let params: Vec<Tensor> = optimizer.params().iter().map(|p| p.tensor.shallow_clone()).collect();
                let cap = (args.ddp_bucket_cap_mb * 1024.0 * 1024.0) as usize;
                // Two slots ride along each all-reduce: whether a rank got SIGINT or SIGTERM.
                let mut buckets = GradientBuckets::new(&params, cap, 2)?;
                buckets.overlap_with_backward(&params, &dist)?;
                Some((dist, buckets))
            }
            None => None,
        };
        let (train, eval) = (train.to_device(device), eval.to_device(device));
        let state = TrainerState {
            is_local_process_zero: dist.as_ref().is_none_or(|(d, _)| d.env.local_rank == 0),
            is_world_process_zero: dist.as_ref().is_none_or(|(d, _)| d.rank() == 0),
            ..Default::default()
        };
        let mut trainer = Self {
            args,
            device,
            vars,
            model,
            shape,
            optimizer,
            scheduler: None,
            precision,
            scaler: (precision == Precision::Float16).then(GradScaler::default),
            skipped_steps: 0,
            loss,
            handler,
            train,
            eval,
            state,
            reporter,
            progress: Progress::new(device),
            position: Position::default(),
            new_best: false,
            run_config,
            stop_signal,
            dist,
            agreed_signal: 0,
        };
        trainer.fire(Event::InitEnd, &[])?;
        Ok(trainer)
    }

    fn output_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(&self.args.output_dir)
    }

    /// The learning rate for the next optimizer step (HF: the scheduler's last lr).
    fn current_lr(&self) -> f64 {
        let step = self.state.global_step - self.skipped_steps;
        self.scheduler.as_ref().map_or(self.args.learning_rate, |s| s.lr(step))
    }

    fn fire(&mut self, event: Event, metrics: &[(String, f64)]) -> Result<()> {
        self.handler.fire(event, &self.args, &self.state, metrics)
    }

    /// The ranks of the run (1 without distribution).
    fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, |(d, _)| d.world_size())
    }

    /// Micro-batches per epoch (of this rank's share of the data).
    fn batches_per_epoch(&self) -> usize {
        let (n, bs) = (self.train.len().div_ceil(self.world_size()), self.args.per_device_train_batch_size as usize);
        if self.args.dataloader_drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }

    /// Runs training to the end (or until a callback stops it).
    pub fn train(&mut self) -> Result<Outcome> {
        let args = self.args.clone();
        let ga = args.gradient_accumulation_steps as usize;
        let batches_per_epoch = self.batches_per_epoch();
        anyhow::ensure!(
            batches_per_epoch > 0,
            crate::error::InputError::new(format!(
                "no training batch: {} training examples with per_device_train_batch_size {} and dataloader_drop_last",
                self.train.len(),
                args.per_device_train_batch_size
            ))
        );
        let world = self.world_size();
        if world > 1 && !self.eval.is_empty() && self.eval.len() < world {
            return Err(crate::error::InputError::new(format!(
                "{} evaluation examples for {world} ranks: every rank needs at least one; use more evaluation data or fewer ranks",
                self.eval.len()
            ))
            .into());
        }
        let updates_per_epoch = batches_per_epoch.div_ceil(ga) as i64;
        let (max_steps, num_epochs) = if args.max_steps > 0 {
            (args.max_steps, (args.max_steps + updates_per_epoch - 1) / updates_per_epoch)
        } else {
            ((args.num_train_epochs * updates_per_epoch as f64).ceil() as i64, args.num_train_epochs.ceil() as i64)
        };
        let warmup = TrainingArguments::resolve_steps(args.warmup_steps, max_steps);
        self.scheduler = Some(Scheduler::new(
            args.lr_scheduler_type,
            args.learning_rate,
            warmup,
            max_steps,
            &args.lr_scheduler_kwargs,
        )?);

        self.state.max_steps = max_steps;
        self.state.num_train_epochs = num_epochs as f64;
        self.state.train_batch_size = args.per_device_train_batch_size;
        self.state.logging_steps = TrainingArguments::resolve_steps(args.logging_steps, max_steps);
        self.state.eval_steps =
            TrainingArguments::resolve_steps(args.eval_steps.unwrap_or(args.logging_steps), max_steps);
        self.state.save_steps = TrainingArguments::resolve_steps(args.save_steps, max_steps);
        if self.is_world_zero() {
            crate::engine::checkpoint::remove_stale_temporaries(&self.output_dir());
        }
        if let Some(spec) = &args.resume_from_checkpoint {
            let dir = self.checkpoint_to_resume(spec)?;
            self.restore(&dir)?;
            tracing::info!(
                "resumed from {} at step {} (epoch {}, {} micro-batches into it)",
                dir.display(),
                self.state.global_step,
                self.position.epoch,
                self.position.micro_batches_done
            );
        }

        self.reporter.training_starts(&self.state, self.train.len(), self.eval.len(), updates_per_epoch, ga);
        let started = Instant::now();
        let data_seed = args.data_seed.unwrap_or(args.seed);

        crate::engine::progress_bar::start(max_steps as u64, args.disable_tqdm);
        self.fire(Event::TrainBegin, &[])?;
        if args.eval_on_start {
            self.evaluate()?;
        }
        let resume_at = self.position;
        for epoch in resume_at.epoch..num_epochs {
            self.fire(Event::EpochBegin, &[])?;
            let epoch_order = data::epoch_order(self.train.len(), data_seed, epoch as u64);
            // Every rank's batches: this rank trains on its own and counts the label items
            // of each global step over all of them.
            let (rank, world) = self.dist.as_ref().map_or((0, 1), |(d, _)| (d.rank(), d.world_size()));
            let shards: Vec<Vec<Tensor>> = (0..world)
                .map(|r| {
                    let order = crate::engine::distributed::shard(&epoch_order, r, world);
                    data::batches(&order, args.per_device_train_batch_size as usize, args.dataloader_drop_last)
                })
                .collect();
            let batches = &shards[rank];
            let steps_in_epoch = batches.len();
            // A resumed run starts where the checkpoint was: the batch lists are recomputed
            // from the seed, so no data is read to get there.
            let skip = if epoch == resume_at.epoch { resume_at.micro_batches_done.min(steps_in_epoch) } else { 0 };
            self.position = Position { epoch, micro_batches_done: skip };
            'updates: for (u, update) in batches[skip..].chunks(ga).enumerate() {
                let micro: Vec<Batch> = update.iter().map(|idx| self.train.batch(idx)).collect();
                // HF counts label items over the whole optimizer step before running it.
                let num_items: i64 = if world == 1 {
                    micro.iter().map(|batch| data::count_label_items(batch.labels())).sum()
                } else {
                    self.global_label_items(&shards, skip + u * ga, update.len())
                };
                for (i, batch) in micro.iter().enumerate() {
                    if i == 0 {
                        self.fire(Event::StepBegin, &[])?;
                    }
                    let loss = self.training_loss(batch, num_items)?;
                    // As HF with num_items_in_batch over all ranks: each rank's loss is its
                    // share of the global one; times the world size, DDP's averaging of
                    // the gradients gives the global batch's gradient.
                    let scaled =
                        if self.world_size() > 1 { &loss * self.world_size() as f64 } else { loss.shallow_clone() };
                    if i + 1 == micro.len() {
                        self.arm_gradient_sync()?;
                    }
                    match &self.scaler {
                        Some(scaler) => scaler.scale_loss(&scaled).backward(),
                        None => scaled.backward(),
                    }
                    self.progress.add_loss(&loss, self.state.global_step, args.logging_nan_inf_filter);
                    self.progress.samples_seen += batch.len() as usize;
                    self.position.micro_batches_done += 1;
                    if i + 1 == micro.len() {
                        self.average_gradients()?;
                        let finite = self.unscale_gradients();
                        self.progress.grad_norm = Some(self.optimizer.clip_grad_norm(args.max_grad_norm).map_err(anyhow::Error::msg)?);
                        let skip = self.show_gradients()?;
                        self.fire(Event::PreOptimizerStep, &[])?;
                        if skip {
                            self.skipped_steps += 1;
                        } else if finite {
                            self.optimizer.step(self.current_lr()).map_err(anyhow::Error::msg)?;
                        } else {
                            self.skipped_steps += 1;
                            tracing::debug!("fp16 gradients overflowed: optimizer step skipped, loss scale lowered");
                        }
                        self.fire(Event::OptimizerStep, &[])?;
                        self.show_parameters()?;
                        self.optimizer.zero_grad().map_err(anyhow::Error::msg)?;
                        self.state.global_step += 1;
                        self.state.epoch =
                            epoch as f64 + self.position.micro_batches_done as f64 / steps_in_epoch as f64;
                        self.fire(Event::StepEnd, &[])?;
                        crate::engine::progress_bar::advance(self.state.global_step as u64, None);
                        self.agree_on_control()?;
                        self.maybe_log_save_evaluate()?;
                        self.stop_if_signalled()?;
                    } else {
                        self.fire(Event::SubstepEnd, &[])?;
                    }
                    if self.handler.control.should_epoch_stop || self.handler.control.should_training_stop {
                        break 'updates;
                    }
                }
            }
            self.fire(Event::EpochEnd, &[])?;
            // The epoch is done: a checkpoint from here on resumes at the next one.
            self.position = Position { epoch: epoch + 1, micro_batches_done: 0 };
            self.agree_on_control()?;
            self.maybe_log_save_evaluate()?;
            if self.handler.control.should_training_stop {
                break;
            }
        }

        crate::engine::progress_bar::finish();
        if args.load_best_model_at_end {
            self.load_best_model()?;
        }
        let unlogged = self.loss_since_log_all_ranks()?;
        let samples_seen = self.progress.samples_seen * self.world_size();
        let progress = &self.progress;
        let total_loss = progress.total_loss + unlogged;
        let runtime = started.elapsed().as_secs_f64();
        let steps = self.state.global_step.max(1) as f64;
        let train_metrics: Vec<(String, f64)> = vec![
            ("train_runtime".to_owned(), runtime),
            ("train_samples_per_second".to_owned(), samples_seen as f64 / runtime),
            ("train_steps_per_second".to_owned(), self.state.global_step as f64 / runtime),
            ("train_loss".to_owned(), total_loss / steps),
        ];
        let train_metrics = self.log(train_metrics)?;
        self.fire(Event::TrainEnd, &[])?;
        let eval_metrics = if !self.eval.is_empty() && args.eval_strategy != IntervalStrategy::No {
            self.reporter.last_eval().cloned()
        } else {
            None
        };
        Ok(Outcome { train_metrics, eval_metrics })
    }

    /// Writes the model's weights (HF `save_model`: model.safetensors).
    pub fn save_model(&self, path: &std::path::Path) -> Result<()> {
        crate::engine::weights::save(&self.vars, path)
    }

    /// The trainer state with Hugging Face's trainer_state.json keys.
    pub fn trainer_state_json(&mut self) -> Result<serde_json::Value> {
        let (stateful_callbacks, _) = self.handler.states()?;
        Ok(self.trainer_state_with(stateful_callbacks))
    }

    /// trainer_state.json, with the callbacks' states already collected.
    fn trainer_state_with(&self, stateful_callbacks: serde_json::Value) -> serde_json::Value {
        let s = &self.state;
        serde_json::json!({
            "best_global_step": s.best_global_step,
            "best_metric": s.best_metric,
            "best_model_checkpoint": s.best_model_checkpoint,
            "epoch": s.epoch,
            "eval_steps": s.eval_steps,
            "global_step": s.global_step,
            "is_hyper_param_search": false,
            "is_local_process_zero": s.is_local_process_zero,
            "is_world_process_zero": s.is_world_process_zero,
            "log_history": self.reporter.history,
            "logging_steps": s.logging_steps,
            "max_steps": s.max_steps,
            "num_input_tokens_seen": s.num_input_tokens_seen,
            "num_train_epochs": s.num_train_epochs,
            "save_steps": s.save_steps,
            "stateful_callbacks": stateful_callbacks,
            "total_flos": s.total_flos,
            "train_batch_size": s.train_batch_size,
            "trial_name": null,
            "trial_params": null,
        })
    }

    /// HF `_maybe_log_save_evaluate`: log if asked (and a step happened since the last
    /// log), then evaluate if asked.
    fn maybe_log_save_evaluate(&mut self) -> Result<()> {
        let learning_rate = self.current_lr();
        let control = &self.handler.control;
        let acts = control.should_log || control.should_evaluate || control.should_save;
        if self.handler.control.should_log && self.state.global_step > self.progress.last_logged_step {
            let summed = self.loss_since_log_all_ranks()?;
            let progress = &mut self.progress;
            let _ = progress.loss_since_log.zero_();
            progress.total_loss += summed;
            let steps = (self.state.global_step - progress.last_logged_step) as f64;
            progress.last_logged_step = self.state.global_step;
            let mut logs = vec![("loss".to_owned(), summed / steps)];
            if let Some(norm) = &progress.grad_norm {
                logs.push(("grad_norm".to_owned(), norm.double_value(&[])));
            }
            logs.push(("learning_rate".to_owned(), learning_rate));
            crate::engine::progress_bar::advance(self.state.global_step as u64, Some(format!("loss {:.4}", summed / steps)));
            self.log(logs)?;
        }
        if self.handler.control.should_evaluate {
            self.evaluate()?;
            if self.args.save_strategy == crate::config::arguments::SaveStrategy::Best {
                self.handler.control.should_save = self.new_best;
            }
        }
        if self.handler.control.should_save {
            self.save_checkpoint()?;
            self.fire(Event::Save, &[])?;
        }
        // on_log, on_evaluate and on_save callbacks may set flags too (early stopping does).
        if acts {
            self.agree_on_control()?;
        }
        Ok(())
    }

    /// HF `Trainer.log`: adds the epoch, records the entry, then fires on_log.
    fn log(&mut self, mut logs: Vec<(String, f64)>) -> Result<Vec<(String, f64)>> {
        let extra = self.handler.extra_logs(&logs)?;
        logs.extend(extra);
        logs.push(("epoch".to_owned(), self.state.epoch));
        self.reporter.log(&self.state, &logs)?;
        self.fire(Event::Log, &logs)?;
        Ok(logs)
    }

    /// Shows the gradients to the callbacks that want them (plugin-api 1.2); true when one
    /// asks to skip this update.
    fn show_gradients(&mut self) -> Result<bool> {
        if !self.handler.wants_gradients() {
            return Ok(false);
        }
        let mut gradients = Tensors::new();
        for param in self.optimizer.params() {
            let grad = param.tensor.grad();
            if grad.defined() {
                gradients.insert(param.name.clone(), grad);
            }
        }
        self.handler.on_gradients(&gradients)
    }

    /// Shows the parameters to the callbacks that want them (plugin-api 1.3).
    fn show_parameters(&mut self) -> Result<()> {
        if !self.handler.wants_parameters() {
            return Ok(());
        }
        let mut parameters = Tensors::new();
        for param in self.optimizer.params() {
            parameters.insert(param.name.clone(), param.tensor.detach());
        }
        self.handler.on_parameters(&parameters)
    }

    /// Puts in place the weights a callback wants evaluations to use (EMA weights, say);
    /// returns the trained weights to put back afterwards.
    fn swap_in_evaluation_weights(&mut self) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        let Some(weights) = self.handler.evaluation_weights()? else { return Ok(None) };
        let mut saved = Vec::new();
        tch::no_grad(|| -> Result<()> {
            for param in self.optimizer.params() {
                let replacement = weights
                    .require(&param.name)
                    .map_err(|e| anyhow::anyhow!("evaluation weights from a callback: {}", e.message()))?;
                anyhow::ensure!(
                    replacement.size() == param.tensor.size(),
                    "evaluation weights from a callback: {} has shape {:?}, the model {:?}",
                    param.name,
                    replacement.size(),
                    param.tensor.size()
                );
                let trained = param.tensor.detach().copy();
                param.tensor.shallow_clone().copy_(&replacement.to_device(param.tensor.device()));
                saved.push((param.tensor.shallow_clone(), trained));
            }
            Ok(())
        })?;
        Ok(Some(saved))
    }

    /// fp16: divides the gradients by the loss scale and adapts the scale; returns whether
    /// the step may be taken (no overflow). Always true without fp16.
    fn unscale_gradients(&mut self) -> bool {
        let Some(scaler) = &mut self.scaler else { return true };
        let grads: Vec<Tensor> =
            self.optimizer.params().iter().map(|p| p.tensor.grad()).filter(Tensor::defined).collect();
        let finite = scaler.unscale(&grads);
        scaler.update(finite);
        finite
    }

    /// The loss of one training micro-batch, normalised by the label items of the whole
    /// optimizer step (`num_items_in_batch`), so accumulated gradients equal one big batch.
    fn training_loss(&mut self, batch: &Batch, num_items: i64) -> Result<Tensor> {
        // HF runs the forward pass and the loss under autocast, the backward pass outside.
        let _autocast = Autocast::enter(self.precision, self.device)?;
        let outputs = self.model.forward(batch, true)?;
        match &mut self.loss {
            Some(loss) => {
                let value = loss.compute_loss(&outputs.to_plugin(), &batch.to_plugin(), Some(num_items))?;
                check_scalar(loss, &value)?;
                Ok(value)
            }
            None => builtin_training_loss(outputs.get_logits(), batch.labels(), num_items),
        }
    }

    /// Evaluates on the eval set: eval_loss (the run's loss, batch means weighted by batch
    /// size, as HF) and eval_accuracy. Fires on_prediction_step per batch, then on_log and
    /// on_evaluate.
    pub fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let trained = self.swap_in_evaluation_weights()?;
        let metrics = self.evaluation_loop("eval", |_, _, _| Ok(()));
        if let Some(trained) = trained {
            tch::no_grad(|| {
                for (mut param, weights) in trained {
                    param.copy_(&weights);
                }
            });
        }
        let metrics = metrics?;
        // As in HF, the metrics given to on_evaluate carry the epoch that `log` adds.
        let metrics = self.log(metrics)?;
        self.fire(Event::Evaluate, &metrics)?;
        // After on_evaluate, as HF: callbacks there still see the previous best metric.
        if let (Some(scheduler), Some((key, _))) = (&mut self.scheduler, self.args.best_metric()) {
            if let Some((_, value)) = metrics.iter().find(|(name, _)| *name == key) {
                scheduler.on_metric(*value);
            }
        }
        self.new_best = self.determine_best_metric(&metrics)?;
        Ok(metrics)
    }
}

/// Running totals between log events. The loss is summed on the device, so that nothing
/// waits on it until a log line reads it.
struct Progress {
    loss_since_log: Tensor,
    total_loss: f64,
    last_logged_step: i64,
    grad_norm: Option<Tensor>,
    samples_seen: usize,
}

impl Progress {
    /// Adds a micro-batch loss. With HF's `logging_nan_inf_filter`, a nan or inf loss
    /// counts as the average since the last log instead (computed on the device: no wait).
    fn add_loss(&mut self, loss: &Tensor, global_step: i64, filter_nan_inf: bool) {
        let loss = loss.detach().to_kind(Kind::Float);
        let loss = if filter_nan_inf {
            let average = &self.loss_since_log / (1 + global_step - self.last_logged_step) as f64;
            loss.where_self(&loss.isfinite(), &average)
        } else {
            loss
        };
        let _ = self.loss_since_log.g_add_(&loss);
    }

    fn new(device: Device) -> Self {
        Self {
            loss_since_log: Tensor::zeros([], (Kind::Float, device)),
            total_loss: 0.0,
            last_logged_step: 0,
            grad_norm: None,
            samples_seen: 0,
        }
    }
}

/// The optimizer the arguments ask for, over the model's parameters (sorted by name), with
/// weight decay where Hugging Face applies it.
fn build_optimizer(args: &TrainingArguments, vars: &nn::VarStore) -> Result<Box<dyn Optimizer>> {
    let mut named: Vec<(String, Tensor)> = vars.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let params = named
        .into_iter()
        .map(|(name, tensor)| {
            let weight_decay = if optim::decays(&name) { args.weight_decay } else { 0.0 };
            Param { name, tensor, weight_decay }
        })
        .collect();
    let adam = AdamSettings { beta1: args.adam_beta1, beta2: args.adam_beta2, eps: args.adam_epsilon };
    Ok(optim::build(&args.optim, &args.optim_args, adam, params)?)
}

/// The built-in training loss: cross entropy summed over the micro-batch's label items
/// (labels of -100 ignored), divided by the label items of the whole optimizer step, as
/// HF's loss with `num_items_in_batch`.
pub fn builtin_training_loss(logits: &Tensor, labels: &Tensor, num_items_in_batch: i64) -> Result<Tensor> {
    Ok(cross_entropy(logits, labels, Reduction::Sum)? / num_items_in_batch.max(1) as f64)
}

/// Cross entropy over label items of any shape: logits [..., classes], labels [...]. Labels
/// that do not fit the logits (a TorchScript model with fewer outputs than classes) are the
/// user's data not fitting the model: an error, not a crash.
fn cross_entropy(logits: &Tensor, labels: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let classes = *logits.size().last().unwrap_or(&0);
    logits
        .reshape([-1, classes])
        .f_cross_entropy_loss::<Tensor>(&labels.reshape([-1]), None, reduction, -100, 0.0)
        .map_err(|e| {
            crate::error::InputError::new(format!(
                "the labels do not fit the model's logits {:?} (labels {:?}, largest {}): {}",
                logits.size(),
                labels.size(),
                labels.max().int64_value(&[]),
                crate::error::first_line(&e.to_string())
            ))
            .into()
        })
}

impl Trainer {
    /// HF `predict`: runs the model over the evaluation data, writes one JSON line per
    /// example to `output` (its index, label, predicted class and class probabilities; for
    /// token models the predicted token at each position), and returns `test_*` metrics,
    /// which on_predict receives.
    pub fn predict(&mut self, output: &std::path::Path) -> Result<Vec<(String, f64)>> {
        use std::io::Write;
        let file = std::fs::File::create(output).map_err(|e| {
            crate::error::InputError::new(format!("cannot write predictions to {}: {e}", output.display()))
        })?;
        let mut out = std::io::BufWriter::new(file);
        let metrics = self.evaluation_loop("test", |logits, labels, start| {
            let predicted = logits.argmax(-1, false);
            if logits.dim() > 2 {
                // Per-position predictions: class probabilities would be vocabulary-sized.
                let predicted = Vec::<Vec<i64>>::try_from(&predicted.flatten(1, -1))?;
                let labels = Vec::<Vec<i64>>::try_from(&labels.flatten(1, -1))?;
                for (i, (prediction, label)) in predicted.iter().zip(&labels).enumerate() {
                    let line =
                        serde_json::json!({"index": start as usize + i, "label": label, "prediction": prediction});
                    writeln!(out, "{line}")?;
                }
                return Ok(());
            }
            let probabilities = logits.to_kind(Kind::Float).softmax(-1, Kind::Float);
            let predicted = Vec::<i64>::try_from(&predicted)?;
            let rows = Vec::<Vec<f32>>::try_from(&probabilities)?;
            let labels: Vec<serde_json::Value> = if labels.is_floating_point() {
                Vec::<Vec<f64>>::try_from(&labels.to_kind(Kind::Double).reshape([labels.size()[0], -1]))?
                    .into_iter()
                    .map(|row| {
                        serde_json::json!(if row.len() == 1 {
                            serde_json::json!(row[0])
                        } else {
                            serde_json::json!(row)
                        })
                    })
                    .collect()
            } else {
                Vec::<i64>::try_from(&labels.reshape([-1]))?.into_iter().map(|l| serde_json::json!(l)).collect()
            };
            for (i, ((prediction, label), probabilities)) in predicted.iter().zip(&labels).zip(&rows).enumerate() {
                let line = serde_json::json!({
                    "index": start as usize + i,
                    "label": label,
                    "prediction": prediction,
                    "probabilities": probabilities,
                });
                writeln!(out, "{line}")?;
            }
            Ok(())
        })?;
        out.flush().with_context(|| format!("cannot write {}", output.display()))?;
        self.fire(Event::Predict, &metrics)?;
        Ok(metrics)
    }

    /// Runs the model over the evaluation data in batches and returns `{prefix}_*` metrics:
    /// the loss (the run's loss, batch means weighted by batch size, as HF), then by task
    /// accuracy and macro F1 (classification) or accuracy and perplexity (causal LM).
    /// `per_batch` sees each batch's logits and labels. Fires on_prediction_step per batch.
    fn evaluation_loop(
        &mut self,
        prefix: &str,
        mut per_batch: impl FnMut(&Tensor, &Tensor, i64) -> Result<()>,
    ) -> Result<Vec<(String, f64)>> {
        let started = Instant::now();
        let n = self.eval.len();
        // In a distributed run each rank evaluates its block and the totals are summed.
        let (first, share) = self.eval_share();
        let (first, end) = (first as i64, (first + share) as i64);
        let bs = self.args.per_device_eval_batch_size;
        let mut tally = Tally::new(self.device);
        let mut batches = 0usize;
        for start in (first..end).step_by(bs as usize) {
            let len = bs.min(end - start);
            let batch = self.eval.slice(start, len);
            let _autocast = Autocast::enter(self.precision, self.device)?;
            let outputs: Outputs = tch::no_grad(|| self.model.forward(&batch, false))?;
            let logits = outputs.get_logits();
            let labels = batch.labels();
            let loss = match &mut self.loss {
                Some(loss) => {
                    let value = tch::no_grad(|| loss.compute_loss(&outputs.to_plugin(), &batch.to_plugin(), None))?;
                    check_scalar(loss, &value)?;
                    value
                }
                None => cross_entropy(logits, labels, Reduction::Mean)?,
            };
            tally.add(&loss, len, logits, labels);
            batches += 1;
            per_batch(logits, labels, start)?;
            self.fire(Event::PredictionStep, &[])?;
        }
        if self.dist.is_some() {
            let totals = tally.totals();
            self.sum_tensors_across_ranks(&totals.iter().collect::<Vec<_>>(), "summing the evaluation metrics")?;
            tally.set_totals(totals);
            batches = self.sum_across_ranks(batches as f64, "summing the evaluation metrics")? as usize;
        }
        let runtime = started.elapsed().as_secs_f64();
        let mut metrics = vec![(format!("{prefix}_loss"), tally.loss_sum.double_value(&[]) / n.max(1) as f64)];
        if let Some(accuracy) = tally.accuracy() {
            metrics.push((format!("{prefix}_accuracy"), accuracy));
        }
        match self.shape.task {
            Task::Classification => {
                if let Some(f1) = tally.macro_f1() {
                    metrics.push((format!("{prefix}_f1"), f1));
                }
            }
            // As HF's run_clm: the exponential of the mean loss.
            Task::CausalLm => {
                metrics.push((format!("{prefix}_perplexity"), metrics[0].1.exp()));
                if let Some(exact) = self.exact_match()? {
                    metrics.push((format!("{prefix}_exact_match"), exact));
                }
            }
        }
        metrics.extend([
            (format!("{prefix}_runtime"), runtime),
            (format!("{prefix}_samples_per_second"), n as f64 / runtime),
            (format!("{prefix}_steps_per_second"), batches as f64 / runtime),
        ]);
        Ok(metrics)
    }
}

impl Trainer {
    /// The share of evaluation texts whose greedy completion after the separator token
    /// reproduces the rest of the text exactly (generation_separator); `None` without one.
    fn exact_match(&self) -> Result<Option<f64>> {
        // Every rank answers, even one whose share has no text, so that the sums match up.
        let Some(separator) = self.eval.separator_token else { return Ok(None) };
        let (mut matched, mut asked) = (0usize, 0usize);
        let (first, share) = self.eval_share();
        for index in first as i64..(first + share) as i64 {
            let Some(tokens) = self.eval.tokens(index) else { return Ok(None) };
            let ids = Vec::<i64>::try_from(&tokens.to_device(Device::Cpu))?;
            let Some(at) = ids.iter().position(|&id| id == separator) else { continue };
            let (prompt, target) = (tokens.narrow(0, 0, at as i64 + 1), &ids[at + 1..]);
            let Some(generated) = self.model.generate(&prompt, target.len() as i64, self.eval.end_token) else {
                return Ok(None);
            };
            let generated = Vec::<i64>::try_from(&generated?.to_device(Device::Cpu))?;
            asked += 1;
            matched += usize::from(generated[at + 1..] == *target);
        }
        let matched = self.sum_across_ranks(matched as f64, "summing exact matches")?;
        let asked = self.sum_across_ranks(asked as f64, "summing exact matches")?;
        Ok((asked > 0.0).then(|| matched / asked))
    }
}

/// Evaluation totals, kept on the device so that no batch waits for a read.
struct Tally {
    loss_sum: Tensor,
    /// Per class: true positives, predictions, labels (class-id labels only).
    classes: Option<[Tensor; 3]>,
    correct: Tensor,
    counted: Tensor,
    /// Labels were not class ids (regression, multi-label): no accuracy or F1.
    not_classes: bool,
}

impl Tally {
    fn new(device: Device) -> Self {
        let zero = || Tensor::zeros([], (Kind::Int64, device));
        Self {
            loss_sum: Tensor::zeros([], (Kind::Double, device)),
            classes: None,
            correct: zero(),
            counted: zero(),
            not_classes: false,
        }
    }

    fn add(&mut self, loss: &Tensor, len: i64, logits: &Tensor, labels: &Tensor) {
        self.loss_sum += loss.detach().to_kind(Kind::Double) * len as f64;
        let classes = *logits.size().last().unwrap_or(&0);
        let class_ids = !labels.is_floating_point() && logits.size()[..logits.dim() - 1] == labels.size()[..];
        if !class_ids || classes < 1 {
            self.not_classes = true;
            return;
        }
        let predicted = logits.argmax(-1, false).reshape([-1]);
        let labels = labels.reshape([-1]);
        let valid = labels.ne(-100);
        self.correct += predicted.eq_tensor(&labels).logical_and(&valid).sum(Kind::Int64);
        self.counted += valid.sum(Kind::Int64);
        // Per-class counts for F1 (skipped for vocabulary-sized token outputs).
        if classes <= 4096 {
            let (predicted, labels) = (predicted.masked_select(&valid), labels.masked_select(&valid));
            let hits = predicted.masked_select(&predicted.eq_tensor(&labels));
            let count = |t: &Tensor| t.bincount::<Tensor>(None, classes).to_kind(Kind::Int64);
            let counts = [count(&hits), count(&predicted), count(&labels)];
            self.classes = Some(match self.classes.take() {
                None => counts,
                Some([a, b, c]) => [a + &counts[0], b + &counts[1], c + &counts[2]],
            });
        }
    }

    /// The totals as tensors to sum across ranks: [loss, correct, counted] and the
    /// per-class counts when kept (every rank evaluates at least one batch, so all ranks
    /// give the same shapes).
    fn totals(&self) -> Vec<Tensor> {
        let scalars = Tensor::stack(
            &[&self.loss_sum, &self.correct.to_kind(Kind::Double), &self.counted.to_kind(Kind::Double)],
            0,
        );
        let mut totals = vec![scalars];
        totals.extend(self.classes.as_ref().map(|counts| Tensor::stack(counts, 0)));
        totals
    }

    /// Takes back the summed [`totals`](Self::totals).
    fn set_totals(&mut self, totals: Vec<Tensor>) {
        self.loss_sum = totals[0].get(0);
        self.correct = totals[0].get(1).to_kind(Kind::Int64);
        self.counted = totals[0].get(2).to_kind(Kind::Int64);
        if let Some(counts) = totals.get(1) {
            self.classes = Some([counts.get(0), counts.get(1), counts.get(2)]);
        }
    }

    fn accuracy(&self) -> Option<f64> {
        if self.not_classes {
            return None;
        }
        Some(self.correct.double_value(&[]) / (self.counted.int64_value(&[]).max(1)) as f64)
    }

    /// Macro F1 over the classes that occur in the labels or the predictions (as
    /// scikit-learn's `f1_score(average="macro")`).
    fn macro_f1(&self) -> Option<f64> {
        if self.not_classes {
            return None;
        }
        let [hits, predicted, labels] = self.classes.as_ref()?;
        let (hits, predicted, labels) = (
            Vec::<i64>::try_from(hits).ok()?,
            Vec::<i64>::try_from(predicted).ok()?,
            Vec::<i64>::try_from(labels).ok()?,
        );
        let scores: Vec<f64> = (0..hits.len())
            .filter(|&c| predicted[c] + labels[c] > 0)
            .map(|c| 2.0 * hits[c] as f64 / (predicted[c] + labels[c]) as f64)
            .collect();
        (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
    }
}

/// A loss must be one number; anything else is the plugin's mistake, named as such.
fn check_scalar(loss: &PluginLoss, value: &Tensor) -> Result<()> {
    if value.dim() != 0 {
        anyhow::bail!(
            "plugin '{}' loss '{}' returned a tensor of shape {:?}; compute_loss must return a scalar",
            loss.plugin,
            loss.name,
            value.size()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels with -100 here and there, split into uneven micro-batches.
    fn problem() -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(3);
        let weight = Tensor::randn([5, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let input = Tensor::randn([9, 4], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, -100, 4, 2, -100, -100, 1, 3, 0]);
        (weight, input, labels)
    }

    fn grad_of(weight: &Tensor, loss: Tensor) -> Tensor {
        let mut grad = weight.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
        loss.backward();
        weight.grad().copy()
    }

    #[test]
    fn macro_f1_and_accuracy_match_scikit_learn() {
        // y_true [0, 0, 1, 2, 2, 2, -100], y_pred [0, 1, 1, 2, 0, 2, 1]: scikit-learn's
        // f1_score(average="macro") over the six counted items is (1/2 + 2/3 + 4/5) / 3.
        let mut tally = Tally::new(Device::Cpu);
        let predicted = Tensor::from_slice(&[0i64, 1, 1, 2, 0, 2, 1]);
        let logits = predicted.one_hot(4).to_kind(Kind::Float);
        let labels = Tensor::from_slice(&[0i64, 0, 1, 2, 2, 2, -100]);
        tally.add(&Tensor::from(0.5f32), 7, &logits.narrow(0, 0, 4), &labels.narrow(0, 0, 4));
        tally.add(&Tensor::from(0.5f32), 7, &logits.narrow(0, 4, 3), &labels.narrow(0, 4, 3));
        let expected = (1.0 / 2.0 + 2.0 / 3.0 + 4.0 / 5.0) / 3.0;
        assert!((tally.macro_f1().unwrap() - expected).abs() < 1e-12);
        assert!((tally.accuracy().unwrap() - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn accumulated_micro_batches_equal_one_big_batch() {
        let (weight, input, labels) = problem();
        let items = data::count_label_items(&labels);
        assert_eq!(items, 6);
        let full = builtin_training_loss(&input.matmul(&weight.tr()), &labels, items).unwrap();
        // The full-batch value is PyTorch's mean over the label items.
        let mean = input.matmul(&weight.tr()).cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0);
        assert!((full.double_value(&[]) - mean.double_value(&[])).abs() < 1e-6);
        let full_grad = grad_of(&weight, full);

        let mut accumulated = weight.zeros_like();
        for (start, len) in [(0, 4), (4, 3), (7, 2)] {
            let (x, y) = (input.narrow(0, start, len), labels.narrow(0, start, len));
            accumulated += grad_of(&weight, builtin_training_loss(&x.matmul(&weight.tr()), &y, items).unwrap());
        }
        let difference = (accumulated - full_grad).abs().max().double_value(&[]);
        assert!(difference < 1e-6, "gradients differ by {difference}");
    }
}
