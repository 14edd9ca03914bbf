//! A run's configuration: Hugging Face's training argument names and defaults, layered from
//! TOML (`layers`), then resolved once into typed specs that the rest of the host takes
//! (`ResolvedConfig`). This is where a training argument becomes an optimizer, a schedule,
//! a model, data, a device, a precision and a distributed setup.

pub mod arguments;
pub mod layers;
pub mod preset;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use plugin_api::BestMetric;

use crate::engine::data::{DataSpec, FileOptions};
use crate::engine::device::DeviceSpec;
use crate::engine::distributed::{Backend, DistributedSpec};
use crate::engine::models::{ModelSpec, Sizes};
use crate::engine::optim::schedule::ScheduleSpec;
use crate::engine::optim::{AdamSettings, OptimizerSpec};
use crate::engine::precision::Precision;
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
        plugins: PluginSelection,
    ) -> Result<Self, crate::error::InputError> {
        args.check_values()?;
        let adam = AdamSettings { beta1: args.adam_beta1, beta2: args.adam_beta2, eps: args.adam_epsilon };
        let optimizer = OptimizerSpec::parse(&args.optim, &args.optim_args, adam)?;
        args.optim = optimizer.kind().name().to_owned();
        let schedule = ScheduleSpec::new(args.lr_scheduler_type, args.learning_rate, &args.lr_scheduler_kwargs)?;
        let model = ModelSpec::parse(
            &args.model,
            Sizes {
                hidden_size: args.hidden_size,
                num_hidden_layers: args.num_hidden_layers,
                num_attention_heads: args.num_attention_heads,
                max_seq_length: args.max_seq_length,
                dropout: args.dropout,
                num_labels: args.num_labels,
                vocab_size: args.vocab_size,
            },
        )?;
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
                tokenizer_file: args.tokenizer_file.clone(),
                max_seq_length: args.max_seq_length,
                generation_separator: args.generation_separator.clone(),
            },
            validation_split_percentage: args.validation_split_percentage,
            max_train_samples: args.max_train_samples,
            max_eval_samples: args.max_eval_samples,
        };
        let device = DeviceSpec::parse(&args.device)?;
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
        Ok(Self { args, plugins, optimizer, schedule, model, data, device, precision, distributed, best_metric })
    }

    /// The configuration as a table that `--config` accepts (and checkpoints keep).
    pub fn to_table(&self) -> Result<toml::Table> {
        let mut table = toml::Value::try_from(&self.args)?.as_table().cloned().unwrap_or_default();
        let selection = &self.plugins;
        layers::insert_selection(&mut table, &selection.plugins, selection.loss.as_deref(), &selection.callbacks);
        if !selection.component_config.is_empty() {
            let components = toml::Value::try_from(&selection.component_config)?;
            table.insert("plugin_config".to_owned(), components);
        }
        Ok(table)
    }
}
