//! The training loop, in Hugging Face Trainer's order of events (`_inner_training_loop`):
//! plan the run, then per epoch its optimizer steps, each over gradient-accumulated
//! micro-batches (`training_step`), then log, evaluate and save as the control flags ask
//! (`_maybe_log_save_evaluate`).

use std::time::Instant;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::auto_batch::simulated_out_of_memory;
use super::metrics::{round_to, speed_metrics};
use super::state::Position;
use super::step_health::StepHealth;
use super::Trainer;
use crate::config::arguments::{IntervalStrategy, SaveStrategy, TrainingArguments, MAX_STEPS};
use crate::engine::callbacks::Event;
use crate::engine::data::prefetch::BatchLoader;
use crate::engine::data::transform::TransformContext;
use crate::engine::data::{self, Batch};
use crate::engine::libtorch;
use crate::engine::memory_metrics::Stage;
use crate::engine::models::Task;
use crate::engine::precision::Autocast;
use crate::engine::{checkpoint, distributed, progress_bar};
use crate::error::{InputError, Interrupted};

/// What a finished run reports.
pub struct Outcome {
    pub train_metrics: Vec<(String, f64)>,
    pub eval_metrics: Option<Vec<(String, f64)>>,
    /// The run resumed from a checkpoint at its last step: nothing was trained or written.
    pub already_complete: bool,
}

/// The run's length, known once the data is.
struct Plan {
    max_steps: i64,
    num_epochs: i64,
    updates_per_epoch: i64,
    /// Micro-batches per optimizer step (gradient_accumulation_steps).
    accumulation: usize,
}

/// One epoch's batches of example indices: every rank's, as each rank counts the label
/// items of a global step itself; this rank trains on its own.
struct EpochBatches {
    shards: Vec<Vec<Tensor>>,
    rank: usize,
}

impl EpochBatches {
    fn mine(&self) -> &[Tensor] {
        &self.shards[self.rank]
    }
}

/// Whether the epoch goes on after an optimizer step.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    StopEpoch,
    /// The step ran out of memory and will run again in smaller micro-batches (of the
    /// same examples); `from` is the micro-batch size it failed with.
    Resized {
        from: usize,
    },
}

/// How many optimizer steps in a row may have a loss or gradient that is not finite
/// (each skipped) before the run stops as diverged.
const NONFINITE_STEPS_IN_A_ROW: i64 = 10;

/// The training loss summed since the last log and the last gradient norm, kept on the
/// device so that nothing waits on them until a log line reads them; and the optimizer
/// steps whose loss or gradient was not finite.
pub(super) struct LossMeter {
    pub(super) since_log: Tensor,
    grad_norm: Option<Tensor>,
    /// The learning rate of the last optimizer step (what HF logs since 4.51).
    step_lr: Option<f64>,
    /// This rank's floating-point operations since they were last added to total_flos.
    pub(super) current_flos: f64,
    /// This rank's input tokens since the last optimizer step (include_num_input_tokens_seen).
    pub(super) current_tokens: i64,
    /// When this process began training (after a resume, too), and num_input_tokens_seen then.
    started: Option<(Instant, i64)>,
    /// 1 when a loss of the current optimizer step was not finite (on the device).
    pub(super) step_nonfinite: Tensor,
    /// The steps whose loss or gradient norm was not finite, counted on the device.
    health: StepHealth,
    /// Non-finite steps as last read: in a row then, and since the last log.
    nonfinite_in_a_row: i64,
    nonfinite_since_log: i64,
}

impl LossMeter {
    pub(super) fn new(device: Device) -> Self {
        Self {
            since_log: Tensor::zeros([], (Kind::Float, device)),
            grad_norm: None,
            step_lr: None,
            current_flos: 0.0,
            current_tokens: 0,
            started: None,
            step_nonfinite: Tensor::zeros([], (Kind::Float, device)),
            health: StepHealth::new(device, NONFINITE_STEPS_IN_A_ROW, 0),
            nonfinite_in_a_row: 0,
            nonfinite_since_log: 0,
        }
    }

    /// Notes whether a micro-batch's loss is finite (on the device: no wait).
    fn note_loss(&mut self, loss: &Tensor) {
        let nonfinite = loss.detach().isfinite().logical_not().to_kind(Kind::Float);
        self.step_nonfinite = self.step_nonfinite.maximum(&nonfinite);
    }

    /// Adds a micro-batch loss. With HF's `logging_nan_inf_filter`, a nan or inf loss counts
    /// as the average of the `steps` since the last log instead (computed on the device).
    fn add(&mut self, loss: &Tensor, steps: i64, filter_nan_inf: bool) {
        let loss = loss.detach().to_kind(Kind::Float);
        let loss = if filter_nan_inf {
            let average = &self.since_log / steps as f64;
            loss.where_self(&loss.isfinite(), &average)
        } else {
            loss
        };
        let _ = self.since_log.g_add_(&loss);
    }
}

/// `HOST_DEFER_STEP_CHECKS=1` makes a CPU run read the non-finite checks only where a
/// CUDA run does (logs, evaluations, saves), so that the tests can cover that path.
fn defer_step_checks() -> bool {
    std::env::var_os("HOST_DEFER_STEP_CHECKS").is_some_and(|v| v == "1")
}

/// HF's optimizer steps and epochs of a run: max_steps when it is set (and the epochs it
/// reaches into), else num_train_epochs of `updates_per_epoch` (a fraction of an epoch
/// rounds its steps up).
fn steps_and_epochs(max_steps: i64, num_train_epochs: f64, updates_per_epoch: i64) -> Result<(i64, i64), InputError> {
    if max_steps > 0 {
        return Ok((max_steps, (max_steps - 1) / updates_per_epoch + 1));
    }
    let steps = (num_train_epochs * updates_per_epoch as f64).ceil();
    if steps > MAX_STEPS as f64 {
        return Err(InputError::new(format!(
            "num_train_epochs {num_train_epochs:e} makes {steps:e} optimizer steps ({updates_per_epoch} per epoch); at most {MAX_STEPS} are supported"
        )));
    }
    Ok((steps as i64, num_train_epochs.ceil() as i64))
}

impl Trainer {
    /// Runs training to the end (or until a callback or a signal stops it).
    pub fn train(&mut self) -> Result<Outcome> {
        self.memory_stage_begins(Stage::Train)?;
        if self.train.total_label_items() == 0 {
            let classifier = match self.model.task {
                Task::Classification => format!(
                    "; a sequence classifier learns from one label per text, and causal language modelling needs a decoder ({})",
                    crate::engine::models::pretrained::arch::causal_language_models().join(", ")
                ),
                Task::CausalLm => String::new(),
            };
            return Err(InputError::new(format!(
                "the training data has nothing to learn: every label is -100; give labelled data (label_column), or set do_train false to only evaluate or predict{classifier}"
            ))
            .into());
        }
        let plan = self.plan()?;
        if !self.prepare(&plan)? {
            return Ok(Outcome { train_metrics: Vec::new(), eval_metrics: None, already_complete: true });
        }
        let started = (Instant::now(), self.run.state.global_step);
        self.meter.started = Some((started.0, self.run.state.num_input_tokens_seen));
        self.meter.health = StepHealth::new(self.device, NONFINITE_STEPS_IN_A_ROW, started.1);
        self.begin(&plan)?;
        let resume_at = self.run.position;
        if self.run.state.global_step >= plan.max_steps {
            // Resumed at the last step (killed before the final files): no step is left,
            // but what the uninterrupted run did after that checkpoint is.
            self.end_interrupted_epoch(resume_at)?;
            return self.finish(started);
        }
        for epoch in resume_at.epoch..plan.num_epochs {
            self.fire(Event::EpochBegin, &[])?;
            let batches = self.epoch_batches(epoch);
            let steps_in_epoch = batches.mine().len();
            // A resumed run starts where the checkpoint was: the batch lists are recomputed
            // from the seed, so no data is read to get there.
            let skip = if epoch == resume_at.epoch { resume_at.micro_batches_done.min(steps_in_epoch) } else { 0 };
            self.run.position = Position { epoch, micro_batches_done: skip };
            let (mut batches, mut steps_in_epoch, mut first) = (batches, steps_in_epoch, skip);
            let mut loader = self.batch_loader(&batches, first);
            while first < steps_in_epoch {
                let count = (self.config.args.gradient_accumulation_steps as usize).min(steps_in_epoch - first);
                match self.optimizer_update(&batches, loader.as_mut(), first, count, steps_in_epoch)? {
                    Flow::Continue => first += count,
                    Flow::StopEpoch => break,
                    Flow::Resized { from } => {
                        // The same examples in smaller micro-batches: the data order holds.
                        first = first * from / self.config.args.per_device_train_batch_size as usize;
                        batches = self.epoch_batches(epoch);
                        steps_in_epoch = batches.mine().len();
                        self.run.position.micro_batches_done = first;
                        loader = self.batch_loader(&batches, first);
                    }
                }
            }
            self.end_epoch(epoch)?;
            if self.callbacks.control.should_training_stop {
                break;
            }
        }
        self.finish(started)
    }

    /// A checkpoint saved at the run's last step inside an epoch (its step end, or a
    /// signal's) came before that epoch's end: the end-of-epoch log, evaluation and save
    /// still follow, as in the run that never stopped. A checkpoint saved at an epoch's end
    /// (position at the next epoch's start) has nothing left to do.
    fn end_interrupted_epoch(&mut self, at: Position) -> Result<()> {
        if at.micro_batches_done == 0 {
            return Ok(());
        }
        // The last step's end asked the run to stop (max_steps reached).
        self.callbacks.control.should_training_stop = true;
        self.end_epoch(at.epoch)
    }

    /// The number of optimizer steps and epochs, as HF computes them, and the schedule.
    fn plan(&mut self) -> Result<Plan> {
        let args = &self.config.args;
        let accumulation = args.gradient_accumulation_steps as usize;
        let batches_per_epoch = self.batches_per_epoch();
        if batches_per_epoch == 0 {
            return Err(InputError::new(format!(
                "no training batch: {} training examples with per_device_train_batch_size {} and dataloader_drop_last",
                self.train.len(),
                args.per_device_train_batch_size
            ))
            .into());
        }
        let world = self.world_size();
        if world > 1 && !self.eval.is_empty() && self.eval.len() < world {
            return Err(InputError::new(format!(
                "{} evaluation examples for {world} ranks: every rank needs at least one; use more evaluation data or fewer ranks",
                self.eval.len()
            ))
            .into());
        }
        let updates_per_epoch = batches_per_epoch.div_ceil(accumulation) as i64;
        let (max_steps, num_epochs) = steps_and_epochs(args.max_steps, args.num_train_epochs, updates_per_epoch)?;
        let warmup = TrainingArguments::resolve_steps(args.warmup_steps, max_steps);
        let state = &mut self.run.state;
        state.max_steps = max_steps;
        state.num_train_epochs = num_epochs as f64;
        state.train_batch_size = args.per_device_train_batch_size;
        state.logging_steps = TrainingArguments::resolve_steps(args.logging_steps, max_steps);
        state.eval_steps = TrainingArguments::resolve_steps(args.eval_steps.unwrap_or(args.logging_steps), max_steps);
        state.save_steps = TrainingArguments::resolve_steps(args.save_steps, max_steps);
        self.plan_schedule(warmup, max_steps);
        Ok(Plan { max_steps, num_epochs, updates_per_epoch, accumulation })
    }

    /// Micro-batches per epoch (of this rank's share of the data).
    pub(super) fn batches_per_epoch(&self) -> usize {
        let args = &self.config.args;
        let (n, bs) = (self.train.len().div_ceil(self.world_size()), args.per_device_train_batch_size as usize);
        if args.dataloader_drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }

    /// Before the clock starts: clears what an interrupted save left, resumes from a
    /// checkpoint if asked, and says what the run will do. False when there is nothing to
    /// train (the checkpoint is at the last step).
    fn prepare(&mut self, plan: &Plan) -> Result<bool> {
        if self.is_world_zero() {
            checkpoint::remove_stale_temporaries(&self.output_dir());
        }
        if let Some(spec) = self.config.args.resume_from_checkpoint.clone() {
            if !self.resume(&spec)? {
                return Ok(false);
            }
        }
        let (n_train, n_eval) = (self.train.len(), self.eval.len());
        self.reporter.training_starts(&self.run.state, n_train, n_eval, plan.updates_per_epoch, plan.accumulation);
        Ok(true)
    }

    /// HF's on_train_begin, and the evaluation eval_on_start asks for; a stop signal that
    /// came during start-up ends the run here, before any step.
    fn begin(&mut self, plan: &Plan) -> Result<()> {
        let signal = self.stop_requested();
        if signal != 0 {
            return Err(Interrupted { signal: signal as i32, checkpoint: None }.into());
        }
        progress_bar::start(plan.max_steps as u64, self.config.args.disable_tqdm);
        self.fire(Event::TrainBegin, &[])?;
        if self.config.args.eval_on_start {
            self.evaluate()?;
        }
        Ok(())
    }

    /// Background threads preparing the epoch's batches from `first` on, with
    /// dataloader_num_workers > 0 (PyTorch's default prefetch_factor: 2).
    fn batch_loader(&self, batches: &EpochBatches, first: usize) -> Option<BatchLoader> {
        let args = &self.config.args;
        let workers = args.dataloader_num_workers as usize;
        let prefetch = args.dataloader_prefetch_factor.unwrap_or(2) as usize;
        (workers > 0).then(|| BatchLoader::start(&self.train, batches.mine(), first, workers, prefetch))
    }

    /// The epoch's batches, in the order the data seed and the epoch give.
    fn epoch_batches(&self, epoch: i64) -> EpochBatches {
        let args = &self.config.args;
        let order = data::epoch_order(self.train.len(), args.data_seed.unwrap_or(args.seed), epoch as u64);
        let (rank, world) = self.rank_and_world();
        let shards = (0..world)
            .map(|r| {
                let shard = distributed::shard(&order, r, world);
                data::batches(&shard, args.per_device_train_batch_size as usize, args.dataloader_drop_last)
            })
            .collect();
        EpochBatches { shards, rank }
    }

    /// One optimizer step over the micro-batches `first..first + count` of the epoch: each
    /// one's forward and backward pass, then the update. A callback may stop the epoch or
    /// the run between micro-batches, as in HF.
    fn optimizer_update(
        &mut self,
        batches: &EpochBatches,
        mut loader: Option<&mut BatchLoader>,
        first: usize,
        count: usize,
        steps_in_epoch: usize,
    ) -> Result<Flow> {
        let mine = batches.mine();
        let micro: Vec<Batch> = (first..first + count)
            .map(|i| loader.as_mut().and_then(|l| l.take(i)).unwrap_or_else(|| self.train.batch(&mine[i])))
            .collect();
        // HF counts label items over the whole optimizer step before running it, over
        // every rank with average_tokens_across_devices.
        let across_ranks = self.world_size() > 1 && self.config.args.average_tokens_across_devices;
        // Counted from the examples' counts made at load: no read from the device.
        let num_items = match across_ranks {
            false => (first..first + count).map(|i| self.train.label_items(&mine[i])).sum(),
            true => self.global_label_items(&batches.shards, first, count),
        };
        let before = self.step_snapshot();
        if let Some(probe) = &mut self.op_probe {
            probe.step_begins(self.run.state.global_step + 1)?;
        }
        for (i, batch) in micro.iter().enumerate() {
            let last = i + 1 == micro.len();
            if i == 0 {
                self.fire(Event::StepBegin, &[])?;
            }
            let tokens = self.input_tokens(&mine[first + i], batch);
            if let Err(error) = self.training_step(batch, num_items, tokens, last) {
                return Ok(Flow::Resized { from: self.retry_smaller(error, before)? });
            }
            if last {
                self.optimizer_step(steps_in_epoch)?;
            } else {
                self.fire(Event::SubstepEnd, &[])?;
            }
            let control = &self.callbacks.control;
            if control.should_epoch_stop || control.should_training_stop {
                return Ok(Flow::StopEpoch);
            }
        }
        Ok(Flow::Continue)
    }

    /// HF `training_step`: one micro-batch's forward and backward pass. The loss is
    /// normalised by the label items of the whole optimizer step (`num_items_in_batch`), so
    /// accumulated gradients equal one big batch.
    fn training_step(&mut self, batch: &Batch, num_items: i64, input_tokens: i64, last_of_step: bool) -> Result<()> {
        let (step, batch_size) = (self.run.state.global_step + 1, self.config.args.per_device_train_batch_size);
        let what = move || format!("training step {step} (per_device_train_batch_size {batch_size})");
        libtorch::guard(what, || {
            simulated_out_of_memory(batch.len())?;
            let transformed = self.transform_batch(batch)?;
            let batch = transformed.as_ref().unwrap_or(batch);
            let loss = self.training_loss(batch, num_items)?;
            if let (Some(parameters), Some(ids)) = (self.model.flop_parameters, batch.get("input_ids")) {
                self.meter.current_flos += 6.0 * ids.numel() as f64 * parameters as f64;
            }
            self.meter.current_tokens += input_tokens;
            // As HF with num_items_in_batch over all ranks: each rank's loss is its share of
            // the global one; times the world size, DDP's averaging of the gradients gives
            // the global batch's gradient.
            let world = self.world_size();
            let across_ranks = world > 1 && self.config.args.average_tokens_across_devices;
            let scaled = if across_ranks { &loss * world as f64 } else { loss.shallow_clone() };
            if last_of_step {
                self.arm_gradient_sync()?;
            }
            let scaled = match &self.scaler {
                Some(scaler) => scaler.scale_loss(&scaled),
                None => scaled,
            };
            // With gradient checkpointing, this recomputes the blocks too (checkpointing.rs).
            scaled.f_backward()?;
            let since_log = 1 + self.run.state.global_step - self.run.totals.last_logged_step;
            self.meter.add(&loss, since_log, self.config.args.logging_nan_inf_filter);
            self.meter.note_loss(&loss);
            Ok(())
        })?;
        self.run.totals.samples_seen += batch.len() as usize;
        self.run.position.micro_batches_done += 1;
        Ok(())
    }

    /// The batch after the batch transform plugins, in order; `None` without any.
    fn transform_batch(&mut self, batch: &Batch) -> Result<Option<Batch>> {
        if self.batch_transforms.is_empty() {
            return Ok(None);
        }
        let context = TransformContext {
            global_step: self.run.state.global_step,
            epoch: self.run.state.epoch,
            num_labels: self.model.num_labels,
        };
        let mut transformed = self.batch_transforms[0].transform(batch, &context)?;
        for transform in &mut self.batch_transforms[1..] {
            transformed = transform.transform(&transformed, &context)?;
        }
        Ok(Some(transformed))
    }

    /// The loss of one training micro-batch: the run's loss over the model's logits, or
    /// over its last hidden states and head where the loss takes them.
    fn training_loss(&mut self, batch: &Batch, num_items: i64) -> Result<Tensor> {
        // HF runs the forward pass and the loss under autocast, the backward pass outside.
        let _autocast = Autocast::enter(self.precision, self.device)?;
        let hidden = match self.loss.takes_hidden_states() {
            true => self.model.net.forward_hidden(batch, true).transpose()?,
            false => None,
        };
        let outputs = match hidden {
            Some(outputs) => outputs,
            None => self.model.net.forward(batch, true)?,
        };
        self.loss.compute(&outputs, batch, Some(num_items), true)
    }

    /// After the step's last backward pass: the update, the step's events, then logging,
    /// evaluation and saving as the flags ask, and a stop if a signal came.
    fn optimizer_step(&mut self, steps_in_epoch: usize) -> Result<()> {
        let step = self.run.state.global_step + 1;
        libtorch::guard(move || format!("optimizer step {step}"), || self.update_weights())?;
        if let Some(probe) = &mut self.op_probe {
            probe.step_ends()?;
        }
        self.run.state.global_step += 1;
        self.add_input_tokens_seen()?;
        if let Some(every) = self.config.args.torch_empty_cache_steps {
            if self.run.state.global_step % every == 0 {
                crate::native::empty_cache().map_err(libtorch::Failed)?;
            }
        }
        let position = self.run.position;
        self.run.state.epoch = position.epoch as f64 + position.micro_batches_done as f64 / steps_in_epoch as f64;
        self.fire(Event::StepEnd, &[])?;
        progress_bar::advance(self.run.state.global_step as u64, None);
        self.agree_on_control()?;
        self.maybe_log_save_evaluate()?;
        self.stop_if_signalled()
    }

    /// Averages the gradients over the ranks, unscales and clips them, lets callbacks see
    /// them, and applies the optimizer, unless a callback asks to skip it, fp16 gradients
    /// overflowed, or the loss or the gradient norm is not finite. That last decision stays
    /// on the device where the optimizer can take it there (fused AdamW's `found_inf`), so
    /// that the host runs ahead; it is read with the next log, evaluation or save, or at
    /// once on a CPU (skipped steps are warned of; too many in a row stop the run).
    fn update_weights(&mut self) -> Result<()> {
        let step = self.run.state.global_step + 1;
        self.meter.step_lr = Some(self.current_lr()?);
        self.average_gradients()?;
        let overflow_free = self.unscale_gradients()?;
        let norm = self.optimizer.clip_grad_norm(self.config.args.max_grad_norm).map_err(libtorch::Failed)?;
        let loss_nonfinite = match &self.dist {
            Some(dp) => Tensor::full([], dp.any_loss_nonfinite as u8 as f64, (Kind::Float, self.device)),
            None => self.meter.step_nonfinite.shallow_clone(),
        };
        self.meter.step_nonfinite = Tensor::zeros([], (Kind::Float, self.device));
        self.meter.grad_norm = Some(norm.shallow_clone());
        let skip = self.show_gradients()?;
        self.fire(Event::PreOptimizerStep, &[])?;
        // Read at once where the device is the CPU, or where the host had to wait anyway.
        let mut read_now = (!self.device.is_cuda() && !defer_step_checks()) || self.dist.is_some();
        if skip {
            // A callback's skip comes first: the step does not count as non-finite.
            self.run.totals.skipped_steps += 1;
        } else if overflow_free {
            // With fp16, a gradient overflow is the scaler's to handle: only the loss counts.
            let nonfinite = self.meter.health.note(step, &loss_nonfinite, self.scaler.is_none().then_some(&norm));
            let lr = self.current_lr()?;
            if !self.optimizer.step_unless(lr, &nonfinite).map_err(libtorch::Failed)? {
                read_now = true;
                if nonfinite.double_value(&[]) == 0.0 {
                    self.optimizer.step(lr).map_err(libtorch::Failed)?;
                }
            }
        } else {
            let _ = self.meter.health.note(step, &loss_nonfinite, None);
            self.run.totals.skipped_steps += 1;
            tracing::debug!("fp16 gradients overflowed: optimizer step skipped, loss scale lowered");
        }
        if read_now {
            self.read_step_health(step)?;
        }
        self.fire(Event::OptimizerStep, &[])?;
        self.show_parameters()?;
        self.optimizer.zero_grad().map_err(libtorch::Failed)?;
        Ok(())
    }

    /// Reads which steps up to `step` had a loss or gradient norm that was not finite:
    /// warns of them, and stops the run as diverged after too many in a row (their updates
    /// were skipped: the weights are still the last finite ones).
    pub(super) fn read_step_health(&mut self, step: i64) -> Result<()> {
        let health = self.meter.health.read(step);
        self.meter.nonfinite_in_a_row = health.in_a_row;
        self.meter.nonfinite_since_log += health.skipped;
        if health.skipped > 0 && health.first_step == health.last_step {
            tracing::warn!(
                "step {step}: the loss or the gradient norm is not finite (nan or inf); the update is skipped ({} in a row)",
                health.in_a_row
            );
        } else if health.skipped > 0 {
            tracing::warn!(
                "steps {} to {step}: {} of them had a loss or gradient norm that is not finite (nan or inf), their updates skipped ({} in a row now)",
                health.first_step,
                health.skipped,
                health.in_a_row
            );
        }
        let Some(from) = health.diverged_from else { return Ok(()) };
        let limit = NONFINITE_STEPS_IN_A_ROW;
        let saved =
            checkpoint::list(&self.output_dir()).last().map_or("no checkpoint was saved".to_owned(), |(_, dir)| {
                format!("the last checkpoint is {}", dir.display())
            });
        anyhow::bail!(
            "training diverged: the loss or the gradient norm was not finite for {limit} optimizer steps in a row (steps {from} to {}), all skipped; {saved}; lower learning_rate, or check the data and the loss",
            from + limit - 1
        )
    }

    /// fp16: divides the gradients by the loss scale and adapts the scale; returns whether
    /// the step may be taken (no overflow). Always true without fp16.
    fn unscale_gradients(&mut self) -> Result<bool> {
        let grads = self.gradients();
        let Some(scaler) = &mut self.scaler else { return Ok(true) };
        let finite = scaler.unscale(&grads).map_err(libtorch::Failed)?;
        scaler.update(finite);
        Ok(finite)
    }

    /// Shows the gradients to the callbacks that want them (plugin-api 1.2); true when one
    /// asks to skip this update.
    fn show_gradients(&mut self) -> Result<bool> {
        if !self.callbacks.wants_gradients() {
            return Ok(false);
        }
        let mut gradients = plugin_api::Tensors::new();
        for param in self.optimizer.params() {
            let grad = param.tensor.grad();
            if grad.defined() {
                gradients.insert(param.name.clone(), grad);
            }
        }
        self.callbacks.on_gradients(&gradients)
    }

    /// Shows the parameters to the callbacks that want them (plugin-api 1.3).
    fn show_parameters(&mut self) -> Result<()> {
        if !self.callbacks.wants_parameters() {
            return Ok(());
        }
        let parameters = self.named_parameters(true);
        self.callbacks.on_parameters(&parameters)
    }

    /// The end of an epoch: a checkpoint from here on resumes at the next one.
    fn end_epoch(&mut self, epoch: i64) -> Result<()> {
        self.fire(Event::EpochEnd, &[])?;
        self.run.position = Position { epoch: epoch + 1, micro_batches_done: 0 };
        self.agree_on_control()?;
        self.maybe_log_save_evaluate()
    }

    /// HF `_maybe_log_save_evaluate`: log if asked (and a step happened since the last
    /// log), then evaluate if asked, then save if asked.
    fn maybe_log_save_evaluate(&mut self) -> Result<()> {
        let control = &self.callbacks.control;
        let acts = control.should_log || control.should_evaluate || control.should_save;
        if acts || control.should_training_stop {
            // The host waits for the device here anyway.
            self.read_step_health(self.run.state.global_step)?;
        }
        if self.callbacks.control.should_log && self.run.state.global_step > self.run.totals.last_logged_step {
            self.log_training_loss()?;
        }
        if self.callbacks.control.should_evaluate {
            let (_, new_best) = self.evaluate()?;
            if self.config.args.save_strategy == SaveStrategy::Best {
                self.callbacks.control.should_save = new_best;
            }
        }
        if self.callbacks.control.should_save && self.meter.nonfinite_in_a_row > 0 {
            // The last good checkpoint stays the newest (and rotation keeps it).
            let step = self.run.state.global_step;
            tracing::warn!("step {step}: no checkpoint while the loss or the gradient is not finite");
        } else if self.callbacks.control.should_save {
            self.save_checkpoint()?;
            self.fire(Event::Save, &[])?;
        }
        // on_log, on_evaluate and on_save callbacks may set flags too (early stopping does).
        if acts {
            self.agree_on_control()?;
        }
        Ok(())
    }

    /// A training log event: the mean loss since the last one, the gradient norm and the
    /// learning rate the last step used (HF's rule since transformers 4.51).
    fn log_training_loss(&mut self) -> Result<()> {
        let learning_rate = match self.meter.step_lr {
            Some(lr) => lr,
            None => self.current_lr()?,
        };
        let summed = self.loss_since_log_all_ranks()?;
        let _ = self.meter.since_log.zero_();
        let (step, totals) = (self.run.state.global_step, &mut self.run.totals);
        totals.total_loss += summed;
        let loss = summed / (step - totals.last_logged_step) as f64;
        totals.last_logged_step = step;
        self.store_flos()?;
        let mut logs = vec![("loss".to_owned(), loss)];
        if let Some(norm) = &self.meter.grad_norm {
            logs.push(("grad_norm".to_owned(), norm.double_value(&[])));
        }
        logs.push(("learning_rate".to_owned(), learning_rate));
        // Steps skipped because the loss or the gradient was not finite, if any.
        let nonfinite = std::mem::take(&mut self.meter.nonfinite_since_log);
        if nonfinite > 0 {
            logs.push(("nonfinite_steps".to_owned(), nonfinite as f64));
        }
        progress_bar::advance(step as u64, Some(format!("loss {loss:.4}")));
        self.log(logs)?;
        Ok(())
    }

    /// HF `Trainer.log`: adds the callbacks' entries and the epoch, records the entry in
    /// the history, writes it, then fires on_log.
    pub(super) fn log(&mut self, mut logs: Vec<(String, f64)>) -> Result<Vec<(String, f64)>> {
        let extra = self.callbacks.extra_logs(&logs)?;
        logs.extend(extra);
        logs.push(("epoch".to_owned(), self.run.state.epoch));
        if self.config.args.include_num_input_tokens_seen != "no" {
            let seen = self.run.state.num_input_tokens_seen;
            // HF passes the training start to the log of a training loss, which then also
            // reports the token rate since this process began training.
            let training_loss = logs.first().is_some_and(|(name, _)| name == "loss");
            logs.push(("num_input_tokens_seen".to_owned(), seen as f64));
            if let (true, Some((started, initial))) = (training_loss, self.meter.started) {
                let runtime = started.elapsed().as_secs_f64();
                logs.push(("train_runtime".to_owned(), round_to(runtime, 4)));
                logs.push(("train_tokens_per_second".to_owned(), round_to((seen - initial) as f64 / runtime, 3)));
            }
        }
        let entry = self.reporter.log(&self.run.state, &logs)?;
        self.run.log_history.push(entry);
        self.fire(Event::Log, &logs)?;
        Ok(logs)
    }

    /// The end of training: the best model if asked, the run's metrics (logged), on_train_end.
    /// `started`: when this call began, and at which step (a resumed run's speed counts
    /// its own steps and samples, as HF's speed_metrics; its train_loss counts every step).
    fn finish(&mut self, started: (Instant, i64)) -> Result<Outcome> {
        self.read_step_health(self.run.state.global_step)?;
        progress_bar::finish();
        let best_loaded = self.config.args.load_best_model_at_end && self.load_best_model()?;
        let unlogged = self.loss_since_log_all_ranks()?;
        let samples_seen = self.run.totals.samples_seen * self.world_size();
        let total_loss = self.run.totals.total_loss + unlogged;
        let runtime = started.0.elapsed().as_secs_f64();
        let steps = self.run.state.global_step;
        self.store_flos()?;
        let steps_here = (steps - started.1) as f64;
        let mut train_metrics = speed_metrics("train", runtime, samples_seen as f64, steps_here);
        train_metrics.extend([
            ("total_flos".to_owned(), self.run.state.total_flos),
            ("train_loss".to_owned(), total_loss / steps.max(1) as f64),
        ]);
        self.memory_stage_ends(Stage::Train, &mut train_metrics)?;
        let train_metrics = self.log(train_metrics)?;
        self.fire(Event::TrainEnd, &[])?;
        let evaluates = !self.eval.is_empty() && self.config.args.eval_strategy != IntervalStrategy::No;
        // The weights are the best checkpoint's: so is the evaluation reported with them.
        let best = self.run.state.best_global_step.filter(|_| best_loaded);
        let eval_metrics = match (evaluates, best) {
            (false, _) => None,
            (true, Some(step)) => {
                let at_best = super::persist::evaluation_at(&self.run.log_history, step);
                if at_best.is_some() && step != self.run.state.global_step {
                    tracing::info!(
                        "the results' eval_* metrics are the evaluation at step {step}, of the best checkpoint whose weights the output holds (do_eval evaluates them again)"
                    );
                }
                at_best.or_else(|| self.last_eval.clone())
            }
            (true, None) => self.last_eval.clone(),
        };
        Ok(Outcome { train_metrics, eval_metrics, already_complete: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_epochs_follow_transformers() {
        // The default job with max_steps 300: 23 updates an epoch reach into the 14th epoch.
        assert_eq!(steps_and_epochs(300, 3.0, 23).unwrap(), (300, 14));
        assert_eq!(steps_and_epochs(23, 3.0, 23).unwrap(), (23, 1));
        // HF's num_update_steps_per_epoch * num_train_epochs, rounded up; epochs rounded up.
        assert_eq!(steps_and_epochs(-1, 2.5, 10).unwrap(), (25, 3));
        assert_eq!(steps_and_epochs(-1, 0.01, 10).unwrap(), (1, 1));
        let error = steps_and_epochs(-1, 1e300, 10).unwrap_err().to_string();
        assert!(error.starts_with("num_train_epochs 1e300 makes 1e301 optimizer steps (10 per epoch)"), "{error}");
    }
}
