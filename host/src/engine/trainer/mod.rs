//! The trainer: Hugging Face Trainer's loop, evaluation and checkpoints over libtorch.
//!
//! This file builds a trainer. `train_loop` trains (HF `_inner_training_loop`,
//! `training_step`, `_maybe_log_save_evaluate`), `eval` evaluates and predicts, `metrics`
//! holds the losses and evaluation metrics, `persist` saves and restores checkpoints,
//! `data_parallel` is what changes with several ranks, and `state` is the run's state.

mod auto_batch;
mod data_parallel;
mod eval;
mod lr_schedule;
mod metrics;
mod op_probe;
mod persist;
pub mod state;
mod step_health;
mod train_loop;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use anyhow::Result;
use plugin_api::Tensors;
use tch::{nn, Device, Tensor};

use crate::config::ResolvedConfig;
use crate::engine::callbacks::{CallbackHandler, Event};
use crate::engine::checkpoint::{self, records::Records};
use crate::engine::data::transform::BatchTransform;
use crate::engine::data::{self, Dataset};
use crate::engine::distributed::Distributed;
use crate::engine::loss::{CrossEntropy, Loss};
use crate::engine::memory_metrics::{MemoryTracker, Stage};
use crate::engine::metric::Metric;
use crate::engine::models::pretrained::{lora, Export};
use crate::engine::models::{self, Model, Task};
use crate::engine::optim::schedule::{LrSchedule, ScheduleFactory};
use crate::engine::optim::{self, Optimizer, Param};
use crate::engine::precision::{GradScaler, Precision};
use crate::engine::report::Reporter;
use crate::engine::{libtorch, memory, weights};
use crate::error::InputError;
use crate::plugins::{selection, OptimizerAdapter, Overrides, PluginLoss, PluginOptimizer};
use state::RunState;

pub use train_loop::Outcome;

/// Everything one training run needs.
pub struct Trainer {
    config: ResolvedConfig,
    device: Device,
    model: ModelParts,
    optimizer: Box<dyn Optimizer>,
    /// Made when training starts, once the number of steps is known.
    /// (Asking for a rate may call into a plugin, which needs it mutable; the trainer asks
    /// from places that only read.)
    schedule: Option<std::cell::RefCell<Box<dyn LrSchedule>>>,
    /// A plugin's schedule (lr_scheduler_type plugin:NAME), made into `schedule` when the
    /// steps are known; without one the built-in schedule is.
    schedule_factory: Option<Box<dyn ScheduleFactory>>,
    /// Metric plugins (compute_metrics), evaluated alongside the built-in metrics.
    metrics: Vec<Box<dyn Metric>>,
    /// Batch transform plugins, applied to each training batch in order.
    batch_transforms: Vec<Box<dyn BatchTransform>>,
    /// The metric plugins' reports of the last evaluation, by metric.
    metric_reports: Vec<(String, serde_json::Value)>,
    /// Where evaluations write the metric reports: output_dir on the first rank of a
    /// training run; none for `host eval` and `host predict`.
    report_dir: Option<PathBuf>,
    precision: Precision,
    /// For fp16: loss scaling.
    scaler: Option<GradScaler>,
    /// The run's loss (the plugin's, or the built-in cross entropy), for training and
    /// evaluation alike.
    loss: Box<dyn Loss>,
    callbacks: CallbackHandler,
    train: Dataset,
    eval: Dataset,
    /// What a checkpoint carries: HF's TrainerState, the log history, the data position
    /// and the running totals.
    pub run: RunState,
    /// The running loss and last gradient norm, on the device (read only when logged).
    meter: train_loop::LossMeter,
    /// The metrics of the last evaluation, for the run's results.
    last_eval: Option<Vec<(String, f64)>>,
    reporter: Reporter,
    /// Set (to the signal number) when SIGINT or SIGTERM asks the run to stop.
    stop_signal: Arc<AtomicUsize>,
    /// A distributed run's process group, gradient buckets and agreed stop signal.
    dist: Option<data_parallel::DataParallel>,
    /// HF's memory metrics, unless skip_memory_metrics.
    memory: Option<MemoryTracker>,
    /// HOST_OP_COUNT's probe of one step's operators, for the benchmarks.
    op_probe: Option<op_probe::OpProbe>,
}

/// The model, its parameters, and what its logits predict.
struct ModelParts {
    vars: nn::VarStore,
    net: Box<dyn Model>,
    task: Task,
    /// For a pretrained model: what makes a saved folder a Hugging Face model folder.
    export: Option<Export>,
    /// The parameters HF's FLOP count multiplies (all but the embeddings), for models
    /// that count FLOPs.
    flop_parameters: Option<u64>,
    /// A built-in classifier's classes (what batch transforms one-hot labels to).
    num_labels: Option<i64>,
}

/// What a trainer is built from. Named fields, so a call site says which is which.
pub struct TrainerSetup {
    pub config: ResolvedConfig,
    pub device: Device,
    pub train: Dataset,
    pub eval: Dataset,
    /// The loss plugin's component; None for the built-in cross entropy.
    pub loss: Option<PluginLoss>,
    pub callbacks: CallbackHandler,
    /// Plugin metrics, optimizer, schedule and batch transforms (plugin-api 1.6).
    pub overrides: Overrides,
    pub reporter: Reporter,
    /// Set (to the signal number) when SIGINT or SIGTERM asks the run to stop.
    pub stop_signal: Arc<AtomicUsize>,
    /// The process group of a distributed run.
    pub dist: Option<Distributed>,
}

impl Trainer {
    pub fn new(setup: TrainerSetup) -> Result<Self> {
        let TrainerSetup { config, device, train, eval, loss, callbacks, overrides, reporter, stop_signal, dist } =
            setup;
        let Overrides {
            metrics,
            optimizer: plugin_optimizer,
            scheduler: plugin_scheduler,
            batch_transforms,
            model: plugin_model,
        } = overrides;
        let mut memory = MemoryTracker::new(config.args.skip_memory_metrics, device);
        if let Some(tracker) = &mut memory {
            tracker.start(Stage::Init)?;
        }
        let precision = config.precision;
        precision.check_device(device)?;
        if let Some(tf32) = config.args.tf32 {
            if tf32 && !device.is_cuda() {
                return Err(InputError::new("tf32 needs a CUDA device (it enables TF32 tensor cores)").into());
            }
            crate::engine::precision::set_tf32(tf32)?;
        }
        if config.args.full_determinism {
            crate::native::full_determinism().map_err(|e| anyhow::anyhow!("full_determinism: {e}"))?;
        }
        tch::manual_seed(config.args.seed as i64);
        let mut vars = nn::VarStore::new(device);
        let plan = models::plan(&config.model, &train, &eval)?;
        if let Some(kind) = plan.kind() {
            // New parameters are made in this dtype (no float32 copy while loading).
            vars.set_kind(kind);
        }
        if let Some(count) = plan.parameter_count() {
            memory::check_training_fits(count, None, device, &config, &model_size_note(&config))?;
        }
        let what = || format!("the model ({})", model_size_note(&config));
        let (mut net, task) = libtorch::guard(what, || plan.build(&vars.root(), plugin_model))?;
        // The activations once the model is known to match its config (building checks
        // a checkpoint against config.json), before any step allocates them.
        if let Some(count) = plan.parameter_count() {
            let activations = step_activations(&plan, &config, &train);
            memory::check_training_fits(count, activations, device, &config, &model_size_note(&config))?;
        }
        let packed = [&train, &eval].iter().any(|data| data.field(crate::engine::data::PACKED_POSITIONS).is_some());
        if packed && !net.reads_packed_positions() {
            return Err(InputError::new(format!(
                "packing needs a model that keeps the packed examples apart (a pretrained causal LM: {}), not {}; set packing false",
                models::pretrained::arch::causal_language_models().join(", "),
                config.args.model
            ))
            .into());
        }
        if let Some(alpha) = config.args.neftune_noise_alpha {
            if !net.enable_neftune(alpha) {
                return Err(InputError::new(format!(
                    "neftune_noise_alpha needs a model with token embeddings (pretrained, transformer, gpt), not {}",
                    config.args.model
                ))
                .into());
            }
        }
        if loss.is_none() && train.labels().is_floating_point() && batch_transforms.is_empty() {
            return Err(InputError::new(
                "the labels are not whole numbers (regression or multi-label targets): the built-in cross entropy needs class ids; load a loss plugin such as mse, huber or bce_with_logits",
            )
            .into());
        }
        if let Some(path) = &config.args.init_weights {
            crate::engine::weights::load_into(&vars, Path::new(path), "init_weights")?;
        }
        if let Some(dir) = plan.adapter_dir() {
            lora::load_adapter(&vars, dir, "model_name_or_path")?;
        }
        if config.args.use_peft {
            log_trainable(&vars);
        }
        let mut optimizer = build_optimizer(&config, &vars, net.as_ref(), plugin_optimizer);
        let export = plan.export();
        let num_labels = plan.num_labels();
        let flop_parameters = net.embedding_weights().map(|embeddings| {
            let variables = vars.variables();
            let counted = variables.iter().filter(|(name, _)| !embeddings.iter().any(|e| name.ends_with(e)));
            counted.map(|(_, tensor)| tensor.numel() as u64).sum()
        });
        let dist =
            dist.map(|dist| data_parallel::DataParallel::start(dist, optimizer.params(), &config)).transpose()?;
        if dist.is_some() {
            optimizer.refresh_from_params(); // Rank 0's weights arrived.
        }
        let (train, eval) = libtorch::guard(
            || "moving the data to the device".to_owned(),
            || Ok((train.to_device(device), eval.to_device(device))),
        )?;
        let smoothing = config.args.label_smoothing_factor;
        let loss: Box<dyn Loss> = match loss {
            Some(plugin) => Box::new(plugin),
            None => Box::new(CrossEntropy { smoothing }),
        };
        let mut run = RunState::default();
        run.state.is_local_process_zero = dist.as_ref().is_none_or(|d| d.local_rank() == 0);
        run.state.is_world_process_zero = dist.as_ref().is_none_or(|d| d.rank() == 0);
        let mut trainer = Self {
            config,
            device,
            model: ModelParts { vars, net, task, export, flop_parameters, num_labels },
            optimizer,
            schedule: None,
            schedule_factory: plugin_scheduler.map(|s| Box::new(s) as Box<dyn ScheduleFactory>),
            metrics: metrics.into_iter().map(|m| Box::new(m) as Box<dyn Metric>).collect(),
            batch_transforms: batch_transforms.into_iter().map(|t| Box::new(t) as Box<dyn BatchTransform>).collect(),
            metric_reports: Vec::new(),
            report_dir: None,
            precision,
            scaler: (precision == Precision::Float16).then(GradScaler::default),
            loss,
            callbacks,
            train,
            eval,
            run,
            meter: train_loop::LossMeter::new(device),
            last_eval: None,
            reporter,
            stop_signal,
            dist,
            memory,
            op_probe: op_probe::OpProbe::from_env()?,
        };
        if trainer.is_world_zero() {
            trainer.report_dir = Some(trainer.output_dir());
        }
        trainer.fire(Event::InitEnd, &[])?;
        trainer.memory_stage_ends(Stage::Init, &mut Vec::new())?;
        Ok(trainer)
    }

    /// A trainer rebuilt from a checkpoint alone, for `host eval` and `host predict`: its
    /// run's configuration (plugins included), its weights, and the step and epoch it was
    /// made at (which callbacks and metrics see). Writes nothing to the run's output_dir.
    /// `data_file` replaces the run's evaluation data.
    pub fn from_checkpoint(dir: &Path, data_file: Option<&Path>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(InputError::new(format!(
                "checkpoint {} {}; give a checkpoint folder (output_dir/checkpoint-N)",
                dir.display(),
                crate::error::what_is_at(dir)
            ))
            .into());
        }
        let (saved, host_state) = checkpoint::verify(dir)
            .and_then(|()| Records::read_for_evaluation(dir))
            .map_err(|problem| InputError::new(format!("checkpoint: {problem}")))?;
        let table = match toml::Value::try_from(&host_state.run_config) {
            Ok(toml::Value::Table(table)) => table,
            _ => {
                return Err(InputError::new(format!(
                    "checkpoint {}: host_state.json has no run configuration",
                    dir.display()
                ))
                .into())
            }
        };
        let mut config = ResolvedConfig::from_table(table, &format!("checkpoint {}", dir.display()))?;
        if matches!(config.model.architecture, models::Architecture::Pretrained { .. }) {
            // The checkpoint is a Hugging Face folder itself: config, weights, tokenizer.
            config.args.model_name_or_path = Some(dir.display().to_string());
            config = ResolvedConfig::from_table(config.to_table()?, &format!("checkpoint {}", dir.display()))?;
        }
        // The weights come from the checkpoint below (named so in errors), not init_weights.
        let built_in = config.args.model_name_or_path.is_none();
        config.args.init_weights = None;
        config.args.resume_from_checkpoint = None;
        // Evaluating or predicting is what this is for: the run's split is taken.
        config.data.evaluates = true;
        if let Some(file) = data_file {
            config.data.eval_file = Some(file.to_owned());
            config.data.max_eval_samples = None;
        }
        let device = config.device.select()?;
        let components = selection::build(&config.plugins, &serde_json::to_string(&config.args)?)?;
        let (train, eval) = data::load(&config.data)?;
        let mut trainer = Trainer::new(TrainerSetup {
            config,
            device,
            train,
            eval,
            loss: components.loss,
            callbacks: CallbackHandler::new(components.callbacks),
            overrides: components.overrides,
            reporter: Reporter::console_only(),
            stop_signal: Arc::new(AtomicUsize::new(0)),
            dist: None,
        })?;
        if built_in {
            // The run configuration and the weights are the checkpoint's own: a mismatch
            // is its host_state.json describing another model.
            let what = format!("checkpoint {}: host_state.json's model and the weights differ", dir.display());
            trainer.load_weights(dir, &what)?;
            trainer.optimizer.refresh_from_params();
        }
        let state = &mut trainer.run.state;
        (state.global_step, state.epoch, state.max_steps) = (saved.global_step, saved.epoch, saved.max_steps);
        trainer.report_dir = None;
        Ok(trainer)
    }

    /// HF's memory tracker (skip_memory_metrics false): `stage` begins.
    fn memory_stage_begins(&mut self, stage: Stage) -> Result<()> {
        self.memory.as_mut().map_or(Ok(()), |tracker| tracker.start(stage))
    }

    /// `stage` ends: its memory metrics (and init's, the first time) join `metrics`.
    fn memory_stage_ends(&mut self, stage: Stage, metrics: &mut Vec<(String, f64)>) -> Result<()> {
        self.memory.as_mut().map_or(Ok(()), |tracker| tracker.stop(stage, metrics))
    }

    fn output_dir(&self) -> PathBuf {
        PathBuf::from(&self.config.args.output_dir)
    }

    fn fire(&mut self, event: Event, metrics: &[(String, f64)]) -> Result<()> {
        self.callbacks.fire(event, &self.config.args, &self.run.state, metrics)
    }

    /// The ranks of the run (1 without distribution).
    fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, |d| d.world_size())
    }

    fn is_world_zero(&self) -> bool {
        self.run.state.is_world_process_zero
    }

    /// The model's parameters by name (the optimizer's order).
    fn named_parameters(&self, detach: bool) -> Tensors {
        let mut tensors = Tensors::new();
        for param in self.optimizer.params() {
            let tensor = if detach { param.tensor.detach() } else { param.tensor.shallow_clone() };
            tensors.insert(param.name.clone(), tensor);
        }
        tensors
    }

    /// Writes the model as HF's `save_model` does into `dir` (output_dir), each file
    /// atomically: a failure leaves the previous file whole. Weights of an earlier save in
    /// another layout (one file against shards) are removed after.
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        let mut folder = weights::AtomicFolder { dir: dir.to_path_buf() };
        let written = self.write_model_files(&mut folder)?;
        folder.remove_stale_weights(&written)
    }

    /// Writes the weights (model.safetensors, or shards above save_max_shard_size) and,
    /// for a pretrained model, config.json and the tokenizer's files; for a LoRA run,
    /// the adapter as PEFT saves it. Returns the files.
    fn write_model_files(&self, sink: &mut dyn weights::FileSink) -> Result<Vec<String>> {
        let mut written = match self.adapter() {
            Some(_) => {
                let tensors = lora::adapter_tensors(&self.model.vars);
                sink.write_file(lora::ADAPTER_WEIGHTS, &mut |path| weights::write::write_file(&tensors, path))?;
                vec![lora::ADAPTER_WEIGHTS.to_owned()]
            }
            None => {
                let tensors = weights::named_tensors(&self.model.vars);
                weights::write_model(&tensors, self.config.max_shard_bytes, sink)?
            }
        };
        if let Some(export) = &self.model.export {
            written.extend(export.write(sink)?);
        }
        Ok(written)
    }

    /// A LoRA run's adapter config.
    fn adapter(&self) -> Option<&lora::AdapterConfig> {
        self.model.export.as_ref().and_then(Export::adapter)
    }

    /// Reads a checkpoint's (or the best model's) weights: the model's, or a LoRA run's
    /// adapter. `what` names the argument in errors.
    fn load_weights(&self, dir: &Path, what: &str) -> Result<()> {
        match self.adapter() {
            Some(_) => Ok(lora::load_adapter(&self.model.vars, dir, what)?),
            None => weights::load_into(&self.model.vars, dir, what),
        }
    }

    /// With merge_lora: writes output_dir/merged, the model with the adapter merged in, a
    /// full Hugging Face folder (PEFT's merge_and_unload, then save_pretrained).
    pub fn save_merged(&self) -> Result<()> {
        let (Some(adapter), Some(export)) = (self.adapter(), &self.model.export) else { return Ok(()) };
        if !self.config.args.merge_lora {
            return Ok(());
        }
        let dir = self.output_dir().join("merged");
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let tensors =
            lora::merged_tensors(&self.model.vars, adapter).map_err(|e| anyhow::anyhow!("merge_lora: {e}"))?;
        let mut folder = weights::AtomicFolder { dir: dir.clone() };
        let mut written = weights::write_model(&tensors, self.config.max_shard_bytes, &mut folder)?;
        written.extend(export.write_full(&mut folder)?);
        folder.remove_stale_weights(&written)?;
        tracing::info!("merge_lora: wrote {} (the adapter merged into the base weights)", dir.display());
        Ok(())
    }

    /// The gradients of the parameters the last backward pass reached.
    fn gradients(&self) -> Vec<Tensor> {
        self.optimizer.params().iter().map(|p| p.tensor.grad()).filter(Tensor::defined).collect()
    }
}

/// As PEFT's print_trainable_parameters (LoRA runs, whose base model is frozen).
fn log_trainable(vars: &nn::VarStore) {
    let (mut trainable, mut all) = (0i64, 0i64);
    for tensor in vars.variables().values() {
        all += tensor.numel() as i64;
        if tensor.requires_grad() {
            trainable += tensor.numel() as i64;
        }
    }
    if trainable < all {
        let share = 100.0 * trainable as f64 / all.max(1) as f64;
        tracing::info!("trainable params: {trainable} || all params: {all} || trainable%: {share:.4}");
    }
}

/// A checkpoint folder whose files match their manifest and whose records make sense.
pub(crate) fn open_checkpoint(dir: &Path) -> Result<Records, String> {
    checkpoint::verify(dir)?;
    Records::read(dir)
}

/// A training micro-batch's activations, for the memory check: the longest row of token
/// ids the data has, at per_device_train_batch_size (1 with auto_find_batch_size, which
/// shrinks the batch itself), in 16-bit elements under bf16/fp16 or with 16-bit weights.
fn step_activations(
    plan: &models::ModelPlan,
    config: &ResolvedConfig,
    train: &Dataset,
) -> Option<crate::engine::activations::StepActivations> {
    let ids = train.field("input_ids")?;
    let (rows, sequence) = (*ids.size().first()?, *ids.size().get(1)?);
    let requested = if config.args.auto_find_batch_size { 1 } else { config.args.per_device_train_batch_size };
    let batch = requested.min(rows).max(1);
    let sixteen_bit = config.precision != crate::engine::precision::Precision::Full
        || plan.kind().is_some_and(|k| matches!(k, tch::Kind::BFloat16 | tch::Kind::Half));
    let bytes = plan.activation_bytes(batch, sequence, if sixteen_bit { 2 } else { 4 })?;
    Some(crate::engine::activations::StepActivations { batch, sequence, bytes })
}

/// What sizes the model, for an out-of-memory message: the arguments that set it.
fn model_size_note(config: &ResolvedConfig) -> String {
    let sizes = &config.model.sizes;
    match &config.model.architecture {
        models::Architecture::TorchScript(file) => file.display().to_string(),
        models::Architecture::Pretrained { dir, .. } => dir.display().to_string(),
        models::Architecture::Plugin(name) => format!("model plugin:{name}"),
        _ => format!("hidden_size {}, num_hidden_layers {}", sizes.hidden_size, sizes.num_hidden_layers),
    }
}

/// The optimizer the configuration asks for, over the model's parameters (sorted by name),
/// with weight decay where Hugging Face applies it.
fn build_optimizer(
    config: &ResolvedConfig,
    vars: &nn::VarStore,
    net: &dyn Model,
    plugin: Option<PluginOptimizer>,
) -> Box<dyn Optimizer> {
    // Frozen parameters (a LoRA run's base model) get no gradient and no optimizer state.
    let params: Vec<Param> = weights::named_tensors(vars)
        .into_iter()
        .filter(|(_, tensor)| tensor.requires_grad())
        .map(|(name, tensor)| {
            let weight_decay = if net.decays(&name) { config.args.weight_decay } else { 0.0 };
            Param { name, tensor, weight_decay }
        })
        .collect();
    if config.args.weight_decay > 0.0 {
        let exempt: Vec<&str> = params.iter().filter(|p| p.weight_decay == 0.0).map(|p| p.name.as_str()).collect();
        tracing::info!(
            "weight decay {} on {} of {} parameter tensors; not on: {}",
            config.args.weight_decay,
            params.len() - exempt.len(),
            params.len(),
            if exempt.is_empty() { "none".to_owned() } else { exempt.join(", ") }
        );
    }
    match plugin {
        Some(plugin) => optim::with_master_weights(params, |params| Box::new(OptimizerAdapter::new(plugin, params))),
        None => optim::build(&config.optimizer, params),
    }
}
