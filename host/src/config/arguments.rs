//! Training arguments, with Hugging Face `TrainingArguments` names and meanings.
//!
//! Each argument is declared once, below; the macro derives the resolved struct (TOML/JSON
//! keys) and the command-line flags (`--learning-rate`, also `--learning_rate` as HF
//! spells it) from that one list.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::engine::optim::schedule::{LrSchedulerType, SchedulerKwargs, SchedulerType};
use crate::error::InputError;
use plugin_api::BestMetric;

/// When something happens during training (HF `IntervalStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IntervalStrategy {
    No,
    Steps,
    Epoch,
}

/// When to save checkpoints (HF `SaveStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SaveStrategy {
    No,
    Steps,
    Epoch,
    Best,
}

macro_rules! training_arguments {
    ($(
        $(#[doc = $doc:literal])*
        $(#[arg($($flag_attr:tt)*)])?
        $name:ident : $ty:ty = $default:expr, flag $flag_ty:ty;
    )*) => {
        /// The resolved training arguments of a run.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct TrainingArguments {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for TrainingArguments {
            /// Hugging Face's defaults (the job preset may override some; see `job.rs`).
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        /// Command-line flags for the training arguments; a flag given wins over the file.
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct TrainingFlags {
            $(
                $(#[doc = $doc])*
                #[arg(long, alias = stringify!($name), help_heading = "Training arguments")]
                #[arg(allow_hyphen_values = <$flag_ty as FlagValue>::NUMERIC, value_parser = <$flag_ty as FlagValue>::parser())]
                $(#[arg($($flag_attr)*)])?
                pub $name: Option<$flag_ty>,
            )*
        }

        impl TrainingFlags {
            /// The flags that were given, as TOML keys and values. TOML's integers are
            /// 64-bit signed: a larger value (a seed of 2^63) is refused by name.
            pub fn to_table(&self) -> Result<toml::Table, InputError> {
                let mut table = toml::Table::new();
                $(
                    if let Some(value) = &self.$name {
                        let value = toml::Value::try_from(value).map_err(|e| {
                            InputError::new(format!(
                                "--{} {value:?}: {e}; it must be at most {} (2^63 - 1)",
                                stringify!($name).replace('_', "-"),
                                i64::MAX
                            ))
                        })?;
                        table.insert(stringify!($name).to_owned(), value);
                    }
                )*
                Ok(table)
            }
        }

        /// Every training argument's name, in declaration order.
        pub const ARGUMENT_NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

training_arguments! {
    /// Where logs and outputs of the run are written.
    output_dir: String = "output".to_owned(), flag String;
    /// Total number of training epochs (fractions allowed); ignored when max_steps > 0.
    num_train_epochs: f64 = 3.0, flag f64;
    /// Total number of optimizer steps; overrides num_train_epochs when > 0.
    max_steps: i64 = -1, flag i64;
    /// Batch size for training.
    per_device_train_batch_size: i64 = 8, flag i64;
    /// Batch size for evaluation.
    per_device_eval_batch_size: i64 = 8, flag i64;
    /// Micro-batches accumulated before each optimizer step.
    gradient_accumulation_steps: i64 = 1, flag i64;
    /// Optimizer: adamw, adam, sgd, rmsprop, adagrad, lion, adafactor (HF names accepted),
    /// or plugin:NAME, a plugin's optimizer.
    optim: String = "adamw".to_owned(), flag String;
    /// Optimizer settings as key=value pairs, e.g. momentum=0.9,nesterov=true (sgd).
    optim_args: String = String::new(), flag String;
    /// Peak learning rate.
    learning_rate: f64 = 5e-5, flag f64;
    /// Weight decay (not applied to biases and norm weights, as HF); decoupled for adamw and
    /// lion, an L2 term in the gradient for adam, sgd, rmsprop, adagrad.
    weight_decay: f64 = 0.0, flag f64;
    /// AdamW beta1.
    adam_beta1: f64 = 0.9, flag f64;
    /// AdamW beta2.
    adam_beta2: f64 = 0.999, flag f64;
    /// AdamW epsilon.
    adam_epsilon: f64 = 1e-8, flag f64;
    /// Gradient clipping by global norm; 0 disables it.
    max_grad_norm: f64 = 1.0, flag f64;
    /// Learning-rate schedule, as HF's lr_scheduler_type: linear, cosine,
    /// cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt,
    /// reduce_lr_on_plateau, cosine_with_min_lr, cosine_warmup_with_min_lr,
    /// warmup_stable_decay, greedy; or plugin:NAME, a plugin's schedule.
    #[arg(value_name = "NAME")]
    lr_scheduler_type: LrSchedulerType = LrSchedulerType::Builtin(SchedulerType::Linear), flag LrSchedulerType;
    /// Settings of the schedule, e.g. {"num_cycles": 2} (a JSON object; a table in TOML).
    #[arg(value_name = "JSON")]
    lr_scheduler_kwargs: SchedulerKwargs = Default::default(), flag String;
    /// Warm-up steps: a whole number of steps, or a fraction (< 1) of the total steps.
    warmup_steps: f64 = 0.0, flag f64;
    /// When to log training loss: no, steps, epoch.
    logging_strategy: IntervalStrategy = IntervalStrategy::Steps, flag IntervalStrategy;
    /// Log every N optimizer steps (a fraction < 1 means that share of the total steps).
    logging_steps: f64 = 500.0, flag f64;
    /// Also log after the first optimizer step.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    logging_first_step: bool = false, flag bool;
    /// Replace a nan or inf loss in the logged average by the average so far (HF's filter).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    logging_nan_inf_filter: bool = true, flag bool;
    /// Leave out HF's memory metrics; false adds {init,train,eval,test}_mem_{cpu,gpu}_
    /// {alloc,peaked}_delta (bytes) to the train log line and all_results.json.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    skip_memory_metrics: bool = true, flag bool;
    /// No progress bar (there is one only when stderr is a terminal anyway).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    disable_tqdm: bool = false, flag bool;
    /// When to evaluate: no, steps, epoch.
    eval_strategy: IntervalStrategy = IntervalStrategy::No, flag IntervalStrategy;
    /// Epochs (eval_strategy=epoch) or steps (steps) to wait before the first evaluation.
    eval_delay: f64 = 0.0, flag f64;
    /// Evaluate once before training starts, as a sanity check.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    eval_on_start: bool = false, flag bool;
    /// Evaluate every N optimizer steps (eval_strategy=steps); defaults to logging_steps.
    eval_steps: Option<f64> = None, flag f64;
    /// The metric that decides the best model and reduce_lr_on_plateau (e.g. loss,
    /// accuracy; eval_ is added); defaults to loss where one is needed.
    metric_for_best_model: Option<String> = None, flag String;
    /// Whether a larger metric_for_best_model is better; defaults to false for metrics
    /// ending in "loss", true otherwise.
    greater_is_better: Option<bool> = None, flag bool;
    /// When to save a checkpoint: no, steps, epoch, best (when the evaluation metric
    /// improves).
    save_strategy: SaveStrategy = SaveStrategy::Steps, flag SaveStrategy;
    /// Save every N optimizer steps (save_strategy=steps; a fraction < 1 of the total).
    save_steps: f64 = 500.0, flag f64;
    /// Keep at most N checkpoints, deleting the oldest; the best one is always kept.
    save_total_limit: Option<i64> = None, flag i64;
    /// Largest weights file of a saved model; above it the weights are split into shards
    /// with an index, as transformers' save_pretrained (units KB, MB, GB, TB).
    #[arg(value_name = "SIZE")]
    save_max_shard_size: String = "50GB".to_owned(), flag String;
    /// At the end, load the weights of the best checkpoint (by metric_for_best_model).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    load_best_model_at_end: bool = false, flag bool;
    /// Continue from a checkpoint: `latest` (the newest complete one in output_dir) or a
    /// checkpoint folder.
    #[arg(value_name = "latest|DIR")]
    resume_from_checkpoint: Option<String> = None, flag String;
    /// Seed for weight initialisation and everything random in training.
    seed: u64 = 42, flag u64;
    /// Seed for data shuffling; defaults to seed.
    data_seed: Option<u64> = None, flag u64;
    /// Drop the last incomplete training batch of each epoch.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    dataloader_drop_last: bool = false, flag bool;
    /// Training data: .safetensors, .npz, .csv, .parquet, .jsonl (text, with
    /// tokenizer_file) or a folder of .npy files; default: the embedded digits.
    /// safetensors and .npy are memory-mapped.
    #[arg(value_name = "FILE")]
    train_file: Option<String> = None, flag String;
    /// Evaluation data, in the same form; default: validation_split_percentage of the
    /// training data.
    #[arg(value_name = "FILE")]
    eval_file: Option<String> = None, flag String;
    /// The field or column holding the labels (default: labels, else label).
    label_column: Option<String> = None, flag String;
    /// CSV: the feature columns, comma-separated, in order (default: all but the label).
    #[arg(value_name = "A,B,...")]
    feature_columns: Option<String> = None, flag String;
    /// JSONL text: the key holding the text.
    text_column: String = "text".to_owned(), flag String;
    /// A Hugging Face tokenizer.json, which turns JSONL text into input_ids.
    #[arg(value_name = "FILE")]
    tokenizer_file: Option<String> = None, flag String;
    /// Causal LM on text: also evaluate greedy completions after this token (e.g. "=");
    /// eval_exact_match is the share that reproduce the rest of the text exactly.
    #[arg(value_name = "TOKEN")]
    generation_separator: Option<String> = None, flag String;
    /// Share of the data set held out for evaluation, in percent (fixed-seed split).
    validation_split_percentage: f64 = 20.0, flag f64;
    /// Use only the first N training examples (after the split), for quick runs.
    max_train_samples: Option<i64> = None, flag i64;
    /// Use only the first N evaluation examples, for quick runs.
    max_eval_samples: Option<i64> = None, flag i64;
    /// The model: mlp, cnn (images), transformer (classifier over input_ids), gpt (causal
    /// language model), or torchscript:FILE.pt (a PyTorch module).
    #[arg(value_name = "NAME")]
    model: String = "mlp".to_owned(), flag String;
    /// A Hugging Face model folder to fine-tune (config.json, model.safetensors or a
    /// sharded index, tokenizer.json): llama, mistral, qwen2, qwen3, gemma, gemma2,
    /// gemma3_text, phi3, gpt2, opt, bert or
    /// roberta. The
    /// data picks the head: a label per text classifies, plain text trains a causal LM.
    /// Nothing is downloaded; a hub id must be downloaded first (hf download ID --local-dir DIR).
    #[arg(value_name = "DIR")]
    model_name_or_path: Option<String> = None, flag String;
    /// The dtype of a pretrained model's parameters: auto (config.json's), float32,
    /// bfloat16 or float16.
    torch_dtype: String = "auto".to_owned(), flag String;
    /// Train a LoRA adapter (PEFT's format) on the frozen pretrained model instead of
    /// every weight (TRL's name). An adapter folder as model_name_or_path implies it.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    use_peft: bool = false, flag bool;
    /// LoRA rank r: lora_A is [r, in], lora_B [out, r].
    lora_r: i64 = 16, flag i64;
    /// LoRA alpha: the adapter's output is scaled by alpha / r (alpha / sqrt(r) with use_rslora).
    lora_alpha: f64 = 32.0, flag f64;
    /// Dropout on the adapter's input (training only).
    lora_dropout: f64 = 0.05, flag f64;
    /// The linear layers that get an adapter: module names (q_proj,v_proj), matched as PEFT
    /// matches them (the whole name or its last parts), or all-linear (every linear layer
    /// but the output head). Default: the architecture's attention projections, as PEFT.
    #[arg(value_name = "A,B,...|all-linear")]
    lora_target_modules: Option<String> = None, flag String;
    /// Modules trained in full and saved with the adapter (e.g. a new head). A sequence
    /// classifier's head (score, classifier) is always among them, as PEFT's SEQ_CLS.
    #[arg(value_name = "A,B,...")]
    lora_modules_to_save: Option<String> = None, flag String;
    /// Rank-stabilized LoRA: scale by alpha / sqrt(r).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    use_rslora: bool = false, flag bool;
    /// After training, also write output_dir/merged: the model with the adapter merged
    /// into its weights, a full Hugging Face folder.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    merge_lora: bool = false, flag bool;
    /// Recompute each transformer block's activations in the backward pass instead of
    /// keeping them (pretrained models): less memory, about a third more compute. Also
    /// --activation-checkpointing, transformers 5's name.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", aliases = ["activation-checkpointing", "activation_checkpointing"])]
    gradient_checkpointing: bool = false, flag bool;
    /// Width of the hidden layers (mlp, cnn) or of the model (transformer, gpt).
    hidden_size: i64 = 256, flag i64;
    /// Hidden layers (mlp), convolution blocks (cnn) or transformer blocks.
    num_hidden_layers: i64 = 2, flag i64;
    /// Attention heads (transformer, gpt); must divide hidden_size.
    num_attention_heads: i64 = 4, flag i64;
    /// Longest token sequence: text is truncated to it; the model's context length
    /// (transformer, gpt). Default: 128, and for chat and prompt-completion data TRL's
    /// max_length, 1024 (within a pretrained model's learned position table).
    max_seq_length: Option<i64> = None, flag i64;
    /// Chat data (`messages`): learn only the assistant's tokens, the `{% generation %}`
    /// blocks of the tokenizer's chat template (TRL's assistant_only_loss).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    assistant_only_loss: bool = false, flag bool;
    /// Prompt-completion data: learn only the completion's tokens (TRL's
    /// completion_only_loss); default: yes.
    completion_only_loss: Option<bool> = None, flag bool;
    /// Language-modelling and SFT data: pack short examples into rows of max_seq_length
    /// tokens (TRL's packing, best fit decreasing), positions restarting and attention
    /// kept inside each example.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    packing: bool = false, flag bool;
    /// Dropout probability inside the model (training only).
    dropout: f64 = 0.0, flag f64;
    /// Number of classes; default: the largest label + 1.
    num_labels: Option<i64> = None, flag i64;
    /// Vocabulary size (transformer, gpt); default: the tokenizer's, else the largest
    /// token id + 1.
    vocab_size: Option<i64> = None, flag i64;
    /// Start from these weights (a safetensors file with the model's parameter names, as
    /// PyTorch's state_dict names them) instead of a fresh initialisation.
    #[arg(value_name = "FILE")]
    init_weights: Option<String> = None, flag String;
    /// Mixed precision with bfloat16 autocast (CPU or CUDA).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    bf16: bool = false, flag bool;
    /// Mixed precision with float16 autocast and dynamic loss scaling (CUDA only).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    fp16: bool = false, flag bool;
    /// Allow TF32 tensor cores for float32 matmuls on CUDA (unset: libtorch's default).
    tf32: Option<bool> = None, flag bool;
    /// Device: auto (CUDA when available), cpu, cuda or cuda:N.
    device: String = "auto".to_owned(), flag String;
    /// Distributed runs (torchrun or `host launch`): the c10d backend, gloo or nccl
    /// (default: nccl on CUDA where this host was built with it, else gloo).
    #[arg(value_name = "gloo|nccl")]
    ddp_backend: Option<String> = None, flag String;
    /// Distributed runs: seconds to wait for the other ranks (at the rendezvous and in each
    /// collective) before giving up with an error that names the missing rank.
    ddp_timeout: i64 = 1800, flag i64;
    /// Distributed runs: gradients are all-reduced in flattened buckets of this many MB.
    ddp_bucket_cap_mb: f64 = 25.0, flag f64;
    /// Distributed runs: normalize the loss by the label items of all ranks together
    /// (exact global-batch gradients); false: by each rank's own.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    average_tokens_across_devices: bool = true, flag bool;
    /// Train on the CPU even where CUDA is available (the same as device = cpu).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    use_cpu: bool = false, flag bool;
    /// A name for the run, for the logging integrations (default: output_dir).
    run_name: Option<String> = None, flag String;
    /// Where logs go besides log_history.jsonl: none, all, or a list of tensorboard, csv
    /// (the stock tensorboard and csv_logger callback plugins, found as --plugin NAME is).
    #[arg(value_name = "none|all|tensorboard,csv")]
    report_to: String = "none".to_owned(), flag String;
    /// Smooth the built-in cross entropy's targets by this much (HF's LabelSmoother).
    label_smoothing_factor: f64 = 0.0, flag f64;
    /// On running out of memory in a training step, run the step again with micro-batches
    /// of half the size or less and more gradient accumulation (the same examples a step),
    /// as often as needed; the sizes chosen are logged and checkpointed.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    auto_find_batch_size: bool = false, flag bool;
    /// Background threads that prepare the next training batches (gathering rows, copying
    /// them to the device) while a step runs; 0: in the training thread.
    dataloader_num_workers: i64 = 0, flag i64;
    /// Batches each dataloader worker keeps ready (default 2, as PyTorch).
    dataloader_prefetch_factor: Option<i64> = None, flag i64;
    /// NEFTune: uniform noise of this alpha on the input token embeddings in training
    /// (pretrained, transformer and gpt models; typical 5-15).
    neftune_noise_alpha: Option<f64> = None, flag f64;
    /// Evaluation reports only the loss (no accuracy, F1, perplexity).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    prediction_loss_only: bool = false, flag bool;
    /// Count the input tokens trained on (num_input_tokens_seen in the state and each log
    /// entry): no, all (padding included) or non_padding (true means all).
    #[arg(value_name = "no|all|non_padding")]
    include_num_input_tokens_seen: String = "no".to_owned(), flag String;
    /// Checkpoints hold the model only (no optimizer, scheduler or random state): smaller,
    /// but a run cannot resume from them.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    save_only_model: bool = false, flag bool;
    /// Deterministic libtorch kernels (and an error where an operation has none), for
    /// bitwise-repeatable CUDA runs; slower.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    full_determinism: bool = false, flag bool;
    /// On CUDA, return cached memory to the device every N optimizer steps.
    torch_empty_cache_steps: Option<i64> = None, flag i64;
    /// The main process's log level: debug, info, warning, error, critical, or passive
    /// (RUST_LOG, else info).
    log_level: String = "passive".to_owned(), flag String;
    /// The other ranks' log level (same choices; passive: warning).
    log_level_replica: String = "warning".to_owned(), flag String;
    /// The batch field holding the labels (HF's label_names; one name).
    #[arg(value_name = "NAME")]
    label_names: Option<String> = None, flag String;
    /// Run training (default: yes). With false, only do_eval and do_predict run, on the
    /// model as loaded.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    do_train: Option<bool> = None, flag bool;
    /// Evaluate at the end (eval_results.json), whatever eval_strategy says.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    do_eval: bool = false, flag bool;
    /// Predict on the evaluation data at the end: output_dir/predictions.jsonl and
    /// predict_results.json.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    do_predict: bool = false, flag bool;
}

/// Other spellings of training arguments in TOML (flags take them as aliases).
pub const ARGUMENT_ALIASES: &[(&str, &str)] = &[("activation_checkpointing", "gradient_checkpointing")];

// Written as "ok when the comparison holds", so NaN (for which every comparison is false)
// is refused too.
fn at_least_zero(name: &str, value: f64) -> Result<(), InputError> {
    if value >= 0.0 {
        Ok(())
    } else {
        Err(InputError::new(format!("{name} must be >= 0 (got {value})")))
    }
}

fn above_zero(name: &str, value: f64) -> Result<(), InputError> {
    if value > 0.0 {
        Ok(())
    } else {
        Err(InputError::new(format!("{name} must be > 0 (got {value})")))
    }
}

/// The most optimizer steps a run may plan (about 30 years at a million steps a second):
/// more is a mistake in max_steps or num_train_epochs, not a run.
pub const MAX_STEPS: i64 = 1_000_000_000_000;

/// The metrics an evaluation reports, without their `eval_` prefix.
pub const EVAL_METRICS: &[&str] = &["loss", "accuracy", "f1", "perplexity", "exact_match"];

impl TrainingArguments {
    /// Rejects values no run can use, naming the argument and what is allowed. (Arguments
    /// that become a typed spec, such as optim or device, are checked by their parser.)
    /// metric_for_best_model names one of the host's own metrics (with metric plugins
    /// loaded, the first evaluation checks it against theirs too).
    pub fn check_best_metric_is_builtin(&self) -> Result<(), InputError> {
        if let Some(metric) = &self.metric_for_best_model {
            let name = metric.strip_prefix("eval_").unwrap_or(metric);
            if !EVAL_METRICS.contains(&name) {
                return Err(InputError::new(format!(
                    "metric_for_best_model '{metric}' is not an evaluation metric (one of: {}, or a metric plugin's)",
                    EVAL_METRICS.join(", ")
                )));
            }
        }
        Ok(())
    }

    pub fn check_values(&self) -> Result<(), InputError> {
        if self.output_dir.trim().is_empty() {
            return Err(InputError::new("output_dir is empty: give the folder for the run's files"));
        }
        if self.max_steps > MAX_STEPS {
            return Err(InputError::new(format!(
                "max_steps {} is more optimizer steps than any run takes; at most {MAX_STEPS} are supported",
                self.max_steps
            )));
        }
        let positive = |name: &str, value: i64| {
            if value >= 1 {
                Ok(())
            } else {
                Err(InputError::new(format!("{name} must be at least 1 (got {value})")))
            }
        };
        positive("per_device_train_batch_size", self.per_device_train_batch_size)?;
        positive("per_device_eval_batch_size", self.per_device_eval_batch_size)?;
        positive("gradient_accumulation_steps", self.gradient_accumulation_steps)?;
        if self.max_steps <= 0 && !(self.num_train_epochs > 0.0 && self.num_train_epochs.is_finite()) {
            return Err(InputError::new(format!(
                "num_train_epochs must be a positive number when max_steps is not set (got {})",
                self.num_train_epochs
            )));
        }
        if !(self.learning_rate >= 0.0 && self.learning_rate.is_finite()) {
            return Err(InputError::new(format!("learning_rate must be >= 0 (got {})", self.learning_rate)));
        }
        at_least_zero("weight_decay", self.weight_decay)?;
        for (name, beta) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(InputError::new(format!("{name} must be in [0, 1) (got {beta})")));
            }
        }
        above_zero("adam_epsilon", self.adam_epsilon)?;
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return Err(InputError::new(format!(
                "max_grad_norm must be >= 0, 0 disables clipping (got {})",
                self.max_grad_norm
            )));
        }
        positive("ddp_timeout", self.ddp_timeout)?;
        above_zero("ddp_bucket_cap_mb", self.ddp_bucket_cap_mb)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(InputError::new(format!("dropout must be in [0, 1) (got {})", self.dropout)));
        }
        positive("lora_r", self.lora_r)?;
        above_zero("lora_alpha", self.lora_alpha)?;
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(InputError::new(format!("lora_dropout must be in [0, 1) (got {})", self.lora_dropout)));
        }
        if !self.use_peft {
            let adapter_only = [
                ("lora_target_modules", self.lora_target_modules.is_some()),
                ("lora_modules_to_save", self.lora_modules_to_save.is_some()),
                ("use_rslora", self.use_rslora),
                ("merge_lora", self.merge_lora),
            ];
            if let Some((name, _)) = adapter_only.iter().find(|(_, set)| *set) {
                return Err(InputError::new(format!(
                    "{name} is a LoRA setting, but use_peft is off: add --use-peft to train an adapter"
                )));
            }
        }
        at_least_zero("warmup_steps", self.warmup_steps)?;
        at_least_zero("eval_delay", self.eval_delay)?;
        if self.eval_on_start && self.eval_strategy == IntervalStrategy::No {
            return Err(InputError::new(
                "eval_on_start needs an evaluation set up: set eval_strategy to steps or epoch",
            ));
        }
        above_zero("logging_steps", self.logging_steps)?;
        if let Some(steps) = self.eval_steps {
            above_zero("eval_steps", steps)?;
        }
        if !(self.validation_split_percentage > 0.0 && self.validation_split_percentage < 100.0) {
            return Err(InputError::new(format!(
                "validation_split_percentage must be between 0 and 100, exclusive (got {})",
                self.validation_split_percentage
            )));
        }
        for (name, value) in
            [("max_train_samples", self.max_train_samples), ("max_eval_samples", self.max_eval_samples)]
        {
            if let Some(v) = value {
                positive(name, v)?;
            }
        }
        self.validate_saving()?;
        self.validate_reporting()?;
        if self.lr_scheduler_type.follows_metric() && self.eval_strategy == IntervalStrategy::No {
            return Err(InputError::new(format!(
                "lr_scheduler_type {} needs evaluations: set eval_strategy to steps or epoch",
                self.lr_scheduler_type.name()
            )));
        }
        Ok(())
    }

    /// The arguments about what a run reports and does.
    fn validate_reporting(&self) -> Result<(), InputError> {
        self.report_targets()?;
        if !matches!(self.include_num_input_tokens_seen.as_str(), "no" | "all" | "non_padding" | "true" | "false") {
            return Err(InputError::new(format!(
                "include_num_input_tokens_seen '{}' is not one of: no, all, non_padding (or true, false)",
                self.include_num_input_tokens_seen
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing_factor) {
            return Err(InputError::new(format!(
                "label_smoothing_factor must be in [0, 1) (got {})",
                self.label_smoothing_factor
            )));
        }
        if self.dataloader_num_workers < 0 {
            return Err(InputError::new(format!(
                "dataloader_num_workers must be >= 0 (got {})",
                self.dataloader_num_workers
            )));
        }
        match self.dataloader_prefetch_factor {
            Some(_) if self.dataloader_num_workers == 0 => {
                return Err(InputError::new(
                    "dataloader_prefetch_factor needs dataloader_num_workers > 0 (as HF): set both",
                ))
            }
            Some(factor) if factor < 1 => {
                return Err(InputError::new(format!("dataloader_prefetch_factor must be at least 1 (got {factor})")))
            }
            _ => {}
        }
        if let Some(alpha) = self.neftune_noise_alpha {
            above_zero("neftune_noise_alpha", alpha)?;
        }
        if let Some(steps) = self.torch_empty_cache_steps {
            if steps < 1 {
                return Err(InputError::new(format!("torch_empty_cache_steps must be at least 1 (got {steps})")));
            }
        }
        for (name, level) in [("log_level", &self.log_level), ("log_level_replica", &self.log_level_replica)] {
            log_filter(level).map_err(|e| InputError::new(format!("{name} {e}")))?;
        }
        if let Some(names) = &self.label_names {
            if names.split(',').filter(|n| !n.trim().is_empty()).count() != 1 {
                return Err(InputError::new(format!(
                    "label_names '{names}': the host's batches have one labels field; give one name"
                )));
            }
        }
        if self.do_train == Some(false) && !self.do_eval && !self.do_predict {
            return Err(InputError::new("do_train is false and neither do_eval nor do_predict is set: nothing to do"));
        }
        Ok(())
    }

    /// report_to as the stock callback plugins it names (HF's "none" and "all" too).
    pub fn report_targets(&self) -> Result<Vec<&'static str>, InputError> {
        let mut targets = Vec::new();
        for name in self.report_to.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let plugins: &[&'static str] = match name {
                "none" => &[],
                "all" => &["tensorboard", "csv_logger"],
                "tensorboard" => &["tensorboard"],
                "csv" | "csv_logger" => &["csv_logger"],
                other => {
                    return Err(InputError::new(format!(
                        "report_to '{other}' is not available: the host has no Python integrations (wandb, mlflow, trackio, ...); use tensorboard, csv, all or none, or a callback plugin of your own"
                    )))
                }
            };
            for plugin in plugins {
                if !targets.contains(plugin) {
                    targets.push(*plugin);
                }
            }
        }
        Ok(targets)
    }

    /// Hugging Face's consistency checks for saving and the best model.
    fn validate_saving(&self) -> Result<(), InputError> {
        above_zero("save_steps", self.save_steps)?;
        if let Some(limit) = self.save_total_limit {
            if limit < 1 {
                return Err(InputError::new(format!("save_total_limit must be at least 1 (got {limit})")));
            }
        }
        let evaluates = self.eval_strategy != IntervalStrategy::No;
        if self.save_strategy == SaveStrategy::Best && !evaluates {
            return Err(InputError::new("save_strategy=best needs evaluations: set eval_strategy to steps or epoch"));
        }
        if self.load_best_model_at_end {
            if !evaluates {
                return Err(InputError::new(
                    "load_best_model_at_end needs evaluations: set eval_strategy to steps or epoch",
                ));
            }
            let same = matches!(
                (self.save_strategy, self.eval_strategy),
                (SaveStrategy::Steps, IntervalStrategy::Steps)
                    | (SaveStrategy::Epoch, IntervalStrategy::Epoch)
                    | (SaveStrategy::Best, _)
            );
            if !same {
                return Err(InputError::new(format!(
                    "load_best_model_at_end needs save_strategy to match eval_strategy (save_strategy={}, eval_strategy={})",
                    strategy_name(self.save_strategy), interval_name(self.eval_strategy)
                )));
            }
            if self.save_strategy == SaveStrategy::Steps {
                let eval_steps = self.eval_steps.unwrap_or(self.logging_steps);
                if eval_steps >= 1.0 && self.save_steps >= 1.0 && (self.save_steps as i64) % (eval_steps as i64) != 0 {
                    return Err(InputError::new(format!(
                        "load_best_model_at_end needs save_steps to be a multiple of eval_steps (save_steps={}, eval_steps={eval_steps})",
                        self.save_steps
                    )));
                }
            }
        }
        Ok(())
    }

    /// The metric that decides the best model, as HF's `__post_init__` resolves it: the one
    /// named, else "loss" for reduce_lr_on_plateau and greedy (which step on it); `None`
    /// without.
    pub fn best_metric(&self) -> Option<BestMetric> {
        let metric = self
            .metric_for_best_model
            .clone()
            .or_else(|| self.lr_scheduler_type.follows_metric().then(|| "loss".to_owned()))?;
        Some(BestMetric::resolve(&metric, self.greater_is_better))
    }

    /// Steps given as "N, or a fraction of the total when < 1" (HF's convention).
    pub fn resolve_steps(value: f64, max_steps: i64) -> i64 {
        if value < 1.0 {
            (value * max_steps as f64).ceil() as i64
        } else {
            value as i64
        }
    }
}

/// A log level by HF's name as a tracing filter; `None` for passive (RUST_LOG decides).
pub fn log_filter(level: &str) -> Result<Option<&'static str>, String> {
    match level {
        "passive" => Ok(None),
        "debug" => Ok(Some("debug")),
        "info" => Ok(Some("info")),
        "warning" => Ok(Some("warn")),
        "error" | "critical" => Ok(Some("error")),
        other => Err(format!("'{other}' is not one of: debug, info, warning, error, critical, passive")),
    }
}

fn strategy_name(strategy: SaveStrategy) -> &'static str {
    match strategy {
        SaveStrategy::No => "no",
        SaveStrategy::Steps => "steps",
        SaveStrategy::Epoch => "epoch",
        SaveStrategy::Best => "best",
    }
}

fn interval_name(strategy: IntervalStrategy) -> &'static str {
    match strategy {
        IntervalStrategy::No => "no",
        IntervalStrategy::Steps => "steps",
        IntervalStrategy::Epoch => "epoch",
    }
}

/// How a flag's value is read. A number may start with a minus sign after a space
/// (`--learning-rate -1e-3`, `--max-steps -1`, `--weight-decay -inf`) and is range-checked
/// by name afterwards; other values keep clap's rule (a leading hyphen is the next flag).
/// A boolean reads as HF's `string_to_bool` reads it (yes/no, true/false in any case,
/// 1/0, ...).
pub trait FlagValue {
    const NUMERIC: bool = false;
    fn parser() -> clap::builder::ValueParser;
}

macro_rules! flag_values {
    ($($ty:ty => $numeric:expr),* $(,)?) => {
        $(impl FlagValue for $ty {
            const NUMERIC: bool = $numeric;
            fn parser() -> clap::builder::ValueParser {
                clap::value_parser!($ty).into()
            }
        })*
    };
}

flag_values!(f64 => true, i64 => true, u64 => true, String => false, IntervalStrategy => false, SaveStrategy => false, LrSchedulerType => false);

impl FlagValue for bool {
    fn parser() -> clap::builder::ValueParser {
        clap::builder::BoolishValueParser::new().into()
    }
}
