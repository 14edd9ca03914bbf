//! A run's configuration: Hugging Face's training argument names and defaults, layered from
//! TOML (`layers`), then resolved once into typed specs that the rest of the host takes
//! (`ResolvedConfig`). This is where a training argument becomes an optimizer, a schedule,
//! a model, data, a device, a precision and a distributed setup.

/// max_seq_length when none is given: HF's run_glue's 128, and for chat and
/// prompt-completion data TRL's max_length.
const DEFAULT_MAX_SEQ_LENGTH: i64 = 128;
const SFT_MAX_SEQ_LENGTH: i64 = 1024;

pub mod arguments;
pub mod hf_arguments;
pub(crate) mod layers;
pub(crate) mod preset;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use plugin_api::BestMetric;

use crate::config::arguments::IntervalStrategy;
use crate::engine::data::{DataSpec, FileOptions};
use crate::engine::device::DeviceSpec;
use crate::engine::distributed::{Backend, DistributedSpec};
use crate::engine::models::pretrained::{self, folder::Folder, lora};
use crate::engine::models::{self, ModelSpec, Sizes};
use crate::engine::optim::schedule::{LrSchedulerType, ScheduleSpec, SchedulerType};
use crate::engine::optim::{AdamSettings, OptimizerSpec};
use crate::engine::precision::Precision;
use crate::engine::weights::write::parse_size;
use arguments::TrainingArguments;
use layers::PluginSelection;

/// A run's configuration, resolved and checked once.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// The arguments with HF's names, canonical (aliases resolved, defaults HF derives
    /// filled in): what plugins receive and checkpoints record.
    pub args: TrainingArguments,
    /// Which plugins to load and which of their components to use.
    pub plugins: PluginSelection,
    pub optimizer: OptimizerSpec,
    pub schedule: ScheduleSpec,
    pub model: ModelSpec,
    pub data: DataSpec,
    pub device: DeviceSpec,
    pub precision: Precision,
    pub distributed: DistributedSpec,
    /// metric_for_best_model with greater_is_better, where the run has one.
    pub best_metric: Option<BestMetric>,
    /// save_max_shard_size in bytes.
    pub max_shard_bytes: u64,
}

impl ResolvedConfig {
    /// Resolves a merged TOML table (see `layers`); `origin` names it in errors.
    pub fn from_table(table: toml::Table, origin: &str) -> Result<Self> {
        let (args, plugins) = layers::parse(table, origin)?;
        Ok(Self::from_arguments(args, plugins)?)
    }

    /// Checks the arguments and turns them into the typed specs.
    pub fn from_arguments(
        mut args: TrainingArguments,
        mut plugins: PluginSelection,
    ) -> Result<Self, crate::error::InputError> {
        if args.model_name_or_path.as_ref().is_some_and(|d| lora::AdapterFolder::is_one(Path::new(d))) {
            args.use_peft = true; // An adapter folder trains its adapter on.
        }
        args.check_values()?;
        if plugins.plugins.is_empty() {
            args.check_best_metric_is_builtin()?;
        }
        // As HF's __post_init__: the run is named after its output folder by default.
        args.run_name.get_or_insert_with(|| args.output_dir.clone());
        report_to(&args, &mut plugins)?;
        if let Some(names) = &args.label_names {
            let name = names.trim().trim_end_matches(',').trim().to_owned();
            match &args.label_column {
                Some(column) if *column != name => {
                    return Err(crate::error::InputError::new(format!(
                        "label_names {name} and label_column {column} disagree; give one of them"
                    )))
                }
                _ => args.label_column = Some(name),
            }
        }
        // HF maps booleans to its names.
        match args.include_num_input_tokens_seen.as_str() {
            "true" => args.include_num_input_tokens_seen = "all".to_owned(),
            "false" => args.include_num_input_tokens_seen = "no".to_owned(),
            _ => {}
        }
        let adam = AdamSettings { beta1: args.adam_beta1, beta2: args.adam_beta2, eps: args.adam_epsilon };
        let optimizer = match args.optim.strip_prefix("plugin:") {
            Some(name) => {
                select_plugin("optim", name, "optim_args", !args.optim_args.is_empty(), &mut plugins.optimizer)?;
                OptimizerSpec::Plugin(name.to_owned())
            }
            None => OptimizerSpec::parse(&args.optim, &args.optim_args, adam)?,
        };
        if let Some(kind) = optimizer.kind() {
            args.optim = kind.name().to_owned();
        }
        let schedule = match &args.lr_scheduler_type {
            LrSchedulerType::Builtin(kind) => ScheduleSpec::new(*kind, args.learning_rate, &args.lr_scheduler_kwargs)?,
            LrSchedulerType::Plugin(name) => {
                let kwargs = !args.lr_scheduler_kwargs.0.is_empty();
                select_plugin("lr_scheduler_type", name, "lr_scheduler_kwargs", kwargs, &mut plugins.scheduler)?;
                ScheduleSpec::new(SchedulerType::Constant, args.learning_rate, &Default::default())?
            }
        };
        let max_seq_length = args.max_seq_length.unwrap_or(DEFAULT_MAX_SEQ_LENGTH);
        let sizes = Sizes {
            hidden_size: args.hidden_size,
            num_hidden_layers: args.num_hidden_layers,
            num_attention_heads: args.num_attention_heads,
            max_seq_length,
            dropout: args.dropout,
            num_labels: args.num_labels,
            vocab_size: args.vocab_size,
        };
        let dtype = pretrained::parse_dtype(&args.torch_dtype)?;
        let (model, folder) = match &args.model_name_or_path {
            Some(dir) => {
                // The built-in models' sizes mean nothing to a folder with its config.json
                // (a checkpoint's own run configuration, model "pretrained", is not checked).
                let defaults = TrainingArguments::default();
                let sizes_given = [
                    ("hidden_size", args.hidden_size != defaults.hidden_size),
                    ("num_hidden_layers", args.num_hidden_layers != defaults.num_hidden_layers),
                    ("num_attention_heads", args.num_attention_heads != defaults.num_attention_heads),
                ];
                let fresh_run = args.model == "mlp";
                if let Some((name, _)) = sizes_given.iter().find(|(_, given)| fresh_run && *given) {
                    return Err(crate::error::InputError::new(format!(
                        "{name} and model_name_or_path {dir} are both set: {name} sizes the built-in models, and the folder's config.json gives its own; drop {name}"
                    )));
                }
                if !matches!(args.model.as_str(), "mlp" | "pretrained") {
                    return Err(crate::error::InputError::new(format!(
                        "model {} and model_name_or_path {dir} are both set: a pretrained folder brings its own architecture; drop model",
                        args.model
                    )));
                }
                args.model = "pretrained".to_owned();
                // An adapter's text is read with its base model's tokenizer.
                let (folder, _adapter) = pretrained::open_folder(dir)?;
                let training = pretrained::Training {
                    lora: args.use_peft.then(|| lora_spec(&args)),
                    gradient_checkpointing: args.gradient_checkpointing,
                };
                (ModelSpec::pretrained(dir, dtype, training, sizes), Some(folder))
            }
            None => {
                for (name, set) in
                    [("use_peft", args.use_peft), ("gradient_checkpointing", args.gradient_checkpointing)]
                {
                    if set {
                        return Err(crate::error::InputError::new(format!(
                            "{name} applies to pretrained Hugging Face models: set model_name_or_path to a model folder"
                        )));
                    }
                }
                let spec = ModelSpec::parse(&args.model, sizes)?;
                if let models::Architecture::Plugin(name) = &spec.architecture {
                    plugins.model = Some(name.clone());
                }
                (spec, None)
            }
        };
        let max_shard_bytes = parse_size(&args.save_max_shard_size)
            .map_err(|e| crate::error::InputError::new(format!("save_max_shard_size: {e}")))?;
        // A pretrained folder's tokenizer reads the text, padding as the model expects.
        let tokenizer_file =
            args.tokenizer_file.clone().or_else(|| folder.as_ref().map(|f| f.tokenizer_file().display().to_string()));
        let pad_candidates = folder.as_ref().map(Folder::pad_candidates).unwrap_or_default();
        let data = DataSpec {
            train_file: args.train_file.as_ref().map(PathBuf::from),
            eval_file: args.eval_file.as_ref().map(PathBuf::from),
            files: FileOptions {
                label_column: args.label_column.clone(),
                feature_columns: args
                    .feature_columns
                    .as_ref()
                    .map(|columns| columns.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()),
                text_column: args.text_column.clone(),
                tokenizer_file,
                max_seq_length,
                sft_max_seq_length: args.max_seq_length.unwrap_or_else(|| {
                    // Within a learned position table (GPT-2's, OPT's), which ends.
                    let table = folder.as_ref().and_then(Folder::position_table);
                    table.map_or(SFT_MAX_SEQ_LENGTH, |n| n.min(SFT_MAX_SEQ_LENGTH))
                }),
                generation_separator: args.generation_separator.clone(),
                pad_candidates,
                assistant_only_loss: args.assistant_only_loss,
                completion_only_loss: args.completion_only_loss.unwrap_or(true),
                packing: args.packing,
                classifier: folder.as_ref().and_then(Folder::classifier_class),
            },
            validation_split_percentage: args.validation_split_percentage,
            evaluates: args.eval_strategy != IntervalStrategy::No
                || args.do_eval
                || args.do_predict
                || args.eval_on_start
                || args.load_best_model_at_end,
            max_train_samples: args.max_train_samples,
            max_eval_samples: args.max_eval_samples,
        };
        let device = match DeviceSpec::parse(&args.device)? {
            DeviceSpec::Cuda(_) if args.use_cpu => {
                return Err(crate::error::InputError::new(format!(
                    "use_cpu and device {} are both set; choose one",
                    args.device
                )))
            }
            _ if args.use_cpu => DeviceSpec::Cpu,
            device => device,
        };
        let precision = Precision::from_flags(args.bf16, args.fp16)?;
        let distributed = DistributedSpec {
            backend: args.ddp_backend.as_deref().map(Backend::parse).transpose()?,
            timeout: Duration::from_secs(args.ddp_timeout as u64),
            bucket_cap_bytes: (args.ddp_bucket_cap_mb * 1024.0 * 1024.0) as usize,
        };
        // As HF's __post_init__: everyone (plugins included) reads the resolved values.
        let best_metric = args.best_metric();
        if let Some(best) = &best_metric {
            args.metric_for_best_model.get_or_insert_with(|| best.key.trim_start_matches("eval_").to_owned());
            args.greater_is_better.get_or_insert(best.greater_is_better);
        }
        Ok(Self {
            args,
            plugins,
            optimizer,
            schedule,
            model,
            data,
            device,
            precision,
            distributed,
            best_metric,
            max_shard_bytes,
        })
    }

    /// The configuration as a table that `--config` accepts (and checkpoints keep).
    pub fn to_table(&self) -> Result<toml::Table> {
        let mut table = toml::Value::try_from(&self.args)?.as_table().cloned().unwrap_or_default();
        let selection = &self.plugins;
        layers::insert_selection(&mut table, selection);
        if !selection.component_config.is_empty() {
            let components = toml::Value::try_from(&selection.component_config)?;
            table.insert("plugin_config".to_owned(), components);
        }
        Ok(table)
    }
}

/// `plugin:NAME` for `argument`: selects the component, whose settings come from
/// plugin_config, not from `settings` (the built-in ones' settings argument).
fn select_plugin(
    argument: &str,
    name: &str,
    settings: &str,
    settings_given: bool,
    selected: &mut Option<String>,
) -> Result<(), crate::error::InputError> {
    if name.is_empty() {
        return Err(crate::error::InputError::new(format!(
            "{argument} plugin: needs the component's name (plugin:NAME)"
        )));
    }
    if settings_given {
        return Err(crate::error::InputError::new(format!(
            "{settings} configure the built-in ones; {argument} plugin:{name} takes its settings from [plugin_config.{name}] (or --plugin-config {name}.KEY=VALUE)"
        )));
    }
    *selected = Some(name.to_owned());
    Ok(())
}

/// report_to's integrations as the stock callback plugins that do them: each is loaded by
/// name (as --plugin NAME) and, where callbacks are chosen by name, added to them.
fn report_to(args: &TrainingArguments, plugins: &mut PluginSelection) -> Result<(), crate::error::InputError> {
    for name in args.report_targets()? {
        let loaded = plugins.plugins.iter().any(|path| {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            stem.strip_prefix("lib").unwrap_or(&stem) == name
        });
        if !loaded {
            plugins.plugins.push(PathBuf::from(name));
        }
        if !plugins.callbacks.is_empty() && !plugins.callbacks.iter().any(|c| c == name) {
            plugins.callbacks.push(name.to_owned());
        }
    }
    Ok(())
}

/// The LoRA settings the arguments give (TRL's names).
fn lora_spec(args: &TrainingArguments) -> lora::LoraSpec {
    lora::LoraSpec {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        targets: args.lora_target_modules.as_deref().map(lora::Targets::parse),
        modules_to_save: args.lora_modules_to_save.as_deref().map(lora::split_list).unwrap_or_default(),
        rslora: args.use_rslora,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration from TOML over the defaults (as the command line resolves it).
    fn resolve(toml: &str) -> Result<ResolvedConfig, String> {
        let user: toml::Table = toml::from_str(toml).unwrap();
        ResolvedConfig::from_table(layers::with_defaults(user), "test").map_err(|e| e.to_string())
    }

    #[test]
    fn values_no_run_can_use_are_refused_with_the_argument_named() {
        let cases = [
            ("per_device_train_batch_size = 0", "per_device_train_batch_size must be at least 1 (got 0)"),
            ("gradient_accumulation_steps = -2", "gradient_accumulation_steps must be at least 1 (got -2)"),
            ("learning_rate = -1.0", "learning_rate must be >= 0 (got -1)"),
            ("learning_rate = nan", "learning_rate must be >= 0 (got NaN)"),
            ("adam_beta1 = 1.0", "adam_beta1 must be in [0, 1) (got 1)"),
            ("adam_epsilon = 0.0", "adam_epsilon must be > 0 (got 0)"),
            ("max_grad_norm = -1.0", "max_grad_norm must be >= 0, 0 disables clipping (got -1)"),
            ("num_train_epochs = 0.0", "num_train_epochs must be a positive number when max_steps is not set"),
            ("dropout = 1.0", "dropout must be in [0, 1) (got 1)"),
            ("warmup_steps = -1.0", "warmup_steps must be >= 0 (got -1)"),
            ("logging_steps = 0.0", "logging_steps must be > 0 (got 0)"),
            ("validation_split_percentage = 100.0", "validation_split_percentage must be between 0 and 100"),
            ("max_eval_samples = 0", "max_eval_samples must be at least 1 (got 0)"),
            ("ddp_timeout = 0", "ddp_timeout must be at least 1 (got 0)"),
            ("eval_strategy = \"no\"\neval_on_start = true", "eval_on_start needs an evaluation set up"),
            ("metric_for_best_model = \"speed\"", "metric_for_best_model 'speed' is not an evaluation metric"),
            ("save_total_limit = 0", "save_total_limit must be at least 1 (got 0)"),
            ("save_steps = -1.0", "save_steps must be > 0 (got -1)"),
            ("eval_strategy = \"no\"\nsave_strategy = \"best\"", "save_strategy=best needs evaluations"),
            (
                "load_best_model_at_end = true\nsave_strategy = \"epoch\"\neval_strategy = \"steps\"",
                "load_best_model_at_end needs save_strategy to match eval_strategy (save_strategy=epoch, eval_strategy=steps)",
            ),
            (
                "load_best_model_at_end = true\nsave_strategy = \"steps\"\neval_strategy = \"steps\"\nsave_steps = 30.0\neval_steps = 20.0",
                "load_best_model_at_end needs save_steps to be a multiple of eval_steps",
            ),
            (
                "eval_strategy = \"no\"\nlr_scheduler_type = \"reduce_lr_on_plateau\"",
                "lr_scheduler_type reduce_lr_on_plateau needs evaluations",
            ),
            ("eval_strategy = \"no\"\nlr_scheduler_type = \"greedy\"", "lr_scheduler_type greedy needs evaluations"),
            ("use_cpu = true\ndevice = \"cuda\"", "use_cpu and device cuda are both set; choose one"),
            ("label_smoothing_factor = 1.0", "label_smoothing_factor must be in [0, 1) (got 1)"),
            ("include_num_input_tokens_seen = \"some\"", "include_num_input_tokens_seen 'some' is not one of"),
            ("log_level = \"loud\"", "log_level 'loud' is not one of: debug, info, warning"),
            ("label_names = \"labels,aux\"", "label_names 'labels,aux': the host's batches have one labels field"),
            ("label_names = \"y\"\nlabel_column = \"z\"", "label_names y and label_column z disagree"),
            ("dataloader_num_workers = -1", "dataloader_num_workers must be >= 0 (got -1)"),
            ("neftune_noise_alpha = 0.0", "neftune_noise_alpha must be > 0 (got 0)"),
            ("torch_empty_cache_steps = 0", "torch_empty_cache_steps must be at least 1 (got 0)"),
            ("report_to = \"wandb\"", "report_to 'wandb' is not available"),
            ("do_train = false", "do_train is false and neither do_eval nor do_predict is set: nothing to do"),
            ("lr_scheduler_kwargs = { num_cycles = 2 }", "'num_cycles' is not a setting of linear"),
            ("optim = \"adamx\"", "optim 'adamx' is not one of: adamw (or adamw_torch), adam, sgd"),
            ("optim_args = \"momentum=0.9\"", "optim_args: 'momentum' is not a setting of adamw (it takes: amsgrad)"),
            ("optim = \"sgd\"\noptim_args = \"nesterov=true\"", "nesterov needs momentum > 0 and dampening 0"),
            ("device = \"tpu\"", "device 'tpu' is not one of: auto, cpu, cuda, cuda:N"),
            ("bf16 = true\nfp16 = true", "bf16 and fp16 are both set; choose one"),
            ("ddp_backend = \"mpi\"", "ddp_backend 'mpi' is not one of: gloo, nccl"),
            ("ddp_bucket_cap_mb = 0.0", "ddp_bucket_cap_mb must be > 0 (got 0)"),
            ("model = \"resnet\"", "model 'resnet' is not known; use mlp, cnn, transformer, gpt, torchscript:FILE.pt or plugin:NAME"),
            ("model = \"plugin:\"", "model plugin: needs the model component's name (plugin:NAME)"),
            ("optim = \"plugin:\"", "optim plugin: needs the component's name (plugin:NAME)"),
            ("hidden_size = 0", "hidden_size must be > 0 for the mlp model (got 0)"),
            ("model = \"gpt\"\nhidden_size = 10", "num_attention_heads (4) must divide hidden_size (10)"),
            ("model = \"transformer\"\nmax_seq_length = 0", "max_seq_length must be > 0 for the transformer model"),
        ];
        for (toml, expected) in cases {
            let error = resolve(toml).err().unwrap_or_else(|| panic!("{toml} was accepted"));
            assert!(error.contains(expected), "{toml}: {error}\nshould contain: {expected}");
        }
    }

    #[test]
    fn report_to_selects_the_stock_logging_plugins_once() {
        let config = resolve("report_to = \"all\"\ncallback = [\"early_stopping\"]").unwrap();
        let plugins: Vec<String> = config.plugins.plugins.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(plugins, ["tensorboard", "csv_logger"]);
        assert_eq!(config.plugins.callbacks, ["early_stopping", "tensorboard", "csv_logger"]);
        // Read back from what it prints, nothing doubles.
        let again = ResolvedConfig::from_table(config.to_table().unwrap(), "printed").unwrap();
        assert_eq!(again.plugins, config.plugins);
        assert_eq!(config.args.run_name.as_deref(), Some("output"), "named after output_dir, as HF");
    }

    #[test]
    fn arguments_become_typed_specs_once() {
        let config =
            resolve("optim = \"adamw_torch\"\nlr_scheduler_type = \"reduce_lr_on_plateau\"\ndevice = \"cuda:1\"")
                .unwrap();
        // Aliases become the canonical name, which checkpoints record.
        assert_eq!(config.args.optim, "adamw");
        assert_eq!(config.optimizer.kind(), Some(crate::engine::optim::OptimizerKind::AdamW));
        assert_eq!(config.device, DeviceSpec::Cuda(Some(1)));
        // reduce_lr_on_plateau steps on the loss, as HF fills it in.
        let best = config.best_metric.unwrap();
        assert_eq!((best.key.as_str(), best.greater_is_better), ("eval_loss", false));
        assert_eq!(config.args.metric_for_best_model.as_deref(), Some("loss"));
        assert_eq!(config.args.greater_is_better, Some(false));
        let config =
            resolve("model = \"torchscript:m.pt\"\nddp_bucket_cap_mb = 1.0\nfeature_columns = \"a, b,\"").unwrap();
        assert_eq!(config.model.architecture, crate::engine::models::Architecture::TorchScript("m.pt".into()));
        assert_eq!(config.distributed.bucket_cap_bytes, 1 << 20);
        assert_eq!(config.data.files.feature_columns, Some(vec!["a".to_owned(), "b".to_owned()]));
        // What the configuration prints is what it reads back.
        let again = ResolvedConfig::from_table(config.to_table().unwrap(), "printed").unwrap();
        assert_eq!(again.args, config.args);
    }
}
