//! Every `TrainingArguments` name of transformers 5.24 that is not one of the host's own
//! training arguments, answered: either it changes nothing here (said once in a log line,
//! with why), or it is refused with a reason specific to it. Giving such a name its Hugging
//! Face default (`push_to_hub = false`, `hub_strategy = "every_save"`) is always fine, so
//! a config dumped from `TrainingArguments.to_dict()` reads as it is.
//!
//! The flags are hidden from `--help` (README lists them); they take one value, or none
//! for a boolean (`--push-to-hub`).

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use crate::error::InputError;

/// What the host does with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Any value is accepted; it makes no difference here, for this reason.
    NoEffect(&'static str),
    /// Hugging Face's default value(s) (normalized, see `normalize`) are accepted; any
    /// other value is refused with this reason.
    Refused { defaults: &'static [&'static str], reason: &'static str },
}

const FALSE: &[&str] = &["false"];
const NONE: &[&str] = &[];

/// The names, in transformers' order.
pub const ANSWERS: &[(&str, Answer)] = &[
    (
        "optim_target_modules",
        Answer::Refused {
            defaults: NONE,
            reason: "GaLore and APOLLO optimizers are not available; use optim adamw, adafactor or lion",
        },
    ),
    (
        "bf16_full_eval",
        Answer::Refused {
            defaults: FALSE,
            reason: "evaluation runs in the training precision (bf16 autocast with --bf16); cast the saved model to bfloat16 with --torch-dtype bfloat16 to evaluate it in bf16",
        },
    ),
    (
        "fp16_full_eval",
        Answer::Refused {
            defaults: FALSE,
            reason: "evaluation runs in the training precision (fp16 autocast with --fp16); load the model with --torch-dtype float16 to evaluate it in fp16",
        },
    ),
    (
        "activation_checkpointing_kwargs",
        Answer::Refused {
            defaults: &["{}", r#"{"use_reentrant":false}"#, r#"{"use_reentrant":true}"#],
            reason: "the host's checkpointing recomputes every block (no every_n_layers); use_reentrant makes no difference to it",
        },
    ),
    (
        "gradient_checkpointing_kwargs",
        Answer::Refused {
            defaults: &["{}", r#"{"use_reentrant":false}"#, r#"{"use_reentrant":true}"#],
            reason: "the host's checkpointing recomputes every block (no every_n_layers); use_reentrant makes no difference to it",
        },
    ),
    (
        "torch_compile",
        Answer::Refused {
            defaults: FALSE,
            reason: "torch.compile is a Python compiler, not part of libtorch; the host's loop is already native code",
        },
    ),
    (
        "torch_compile_backend",
        Answer::Refused { defaults: NONE, reason: "torch.compile is a Python compiler, not part of libtorch (no backends)" },
    ),
    (
        "torch_compile_mode",
        Answer::Refused { defaults: NONE, reason: "torch.compile is a Python compiler, not part of libtorch (no modes)" },
    ),
    (
        "use_liger_kernel",
        Answer::NoEffect(
            "the host always computes a causal LM's loss chunked, as Liger's fused linear cross entropy; its other Triton kernels are not ported",
        ),
    ),
    (
        "liger_kernel_config",
        Answer::Refused {
            defaults: NONE,
            reason: "Liger's Triton kernels are not ported (the fused linear cross entropy is always on)",
        },
    ),
    (
        "use_cache",
        Answer::Refused { defaults: FALSE, reason: "the host's models keep no key/value cache (training does not need one)" },
    ),
    (
        "log_on_each_node",
        Answer::NoEffect("rank 0 logs at log_level, every other rank at log_level_replica, on every node"),
    ),
    (
        "project",
        Answer::Refused {
            defaults: &["huggingface"],
            reason: "only Trackio reads it, a Python integration; report_to takes tensorboard or csv",
        },
    ),
    (
        "trackio_space_id",
        Answer::Refused { defaults: NONE, reason: "Trackio is a Python integration; report_to takes tensorboard or csv" },
    ),
    (
        "trackio_bucket_id",
        Answer::Refused { defaults: NONE, reason: "Trackio is a Python integration; report_to takes tensorboard or csv" },
    ),
    (
        "trackio_static_space_id",
        Answer::Refused { defaults: NONE, reason: "Trackio is a Python integration; report_to takes tensorboard or csv" },
    ),
    (
        "eval_do_concat_batches",
        Answer::NoEffect("evaluation keeps running totals on the device, not each batch's predictions"),
    ),
    (
        "eval_use_gather_object",
        Answer::Refused {
            defaults: FALSE,
            reason: "evaluation gathers totals across ranks, never Python objects (there is no compute_metrics to feed)",
        },
    ),
    (
        "eval_accumulation_steps",
        Answer::NoEffect(
            "evaluation keeps running totals on the device, and `host predict` writes predictions batch by batch",
        ),
    ),
    (
        "include_for_metrics",
        Answer::Refused {
            defaults: &["[]"],
            reason: "there is no compute_metrics to pass inputs or losses to; evaluation reports loss, accuracy, F1 and perplexity",
        },
    ),
    (
        "batch_eval_metrics",
        Answer::Refused {
            defaults: FALSE,
            reason: "there is no compute_metrics; the built-in metrics are already computed batch by batch",
        },
    ),
    (
        "save_on_each_node",
        Answer::Refused {
            defaults: FALSE,
            reason: "rank 0 writes checkpoints to output_dir, which every node must share; per-node copies are not supported",
        },
    ),
    (
        "enable_jit_checkpoint",
        Answer::NoEffect("SIGTERM (and SIGINT) always save a checkpoint after the current step and stop the run"),
    ),
    (
        "push_to_hub",
        Answer::Refused {
            defaults: FALSE,
            reason: "the host never uploads; upload output_dir afterwards with `hf upload REPO output_dir`",
        },
    ),
    (
        "hub_token",
        Answer::Refused {
            defaults: &["<HUB_TOKEN>"],
            reason: "the host never uploads; upload output_dir afterwards with `hf upload REPO output_dir`",
        },
    ),
    (
        "hub_private_repo",
        Answer::Refused {
            defaults: NONE,
            reason: "the host never uploads; upload output_dir afterwards with `hf upload REPO output_dir --private`",
        },
    ),
    (
        "hub_model_id",
        Answer::Refused {
            defaults: NONE,
            reason: "the host never uploads; upload output_dir afterwards with `hf upload REPO output_dir`",
        },
    ),
    (
        "hub_strategy",
        Answer::Refused {
            defaults: &["every_save"],
            reason: "the host never uploads; upload checkpoints afterwards with `hf upload REPO output_dir`",
        },
    ),
    (
        "hub_always_push",
        Answer::Refused {
            defaults: FALSE,
            reason: "the host never uploads; upload output_dir afterwards with `hf upload REPO output_dir`",
        },
    ),
    (
        "hub_revision",
        Answer::Refused {
            defaults: NONE,
            reason: "the host never uploads; upload to a branch afterwards with `hf upload REPO output_dir --revision REV`",
        },
    ),
    (
        "ignore_data_skip",
        Answer::Refused {
            defaults: FALSE,
            reason: "resume continues at the exact batch without iterating past the earlier ones (batches are indexed), so there is no skip to avoid",
        },
    ),
    (
        "restore_callback_states_from_checkpoint",
        Answer::NoEffect("resume always restores the saved states of the callbacks that are loaded"),
    ),
    (
        "accelerator_config",
        Answer::Refused {
            // AcceleratorConfig's defaults as to_json_string() writes them (nulls dropped).
            defaults: &[r#"{"even_batches":true,"non_blocking":false,"split_batches":false,"use_seedable_sampler":true}"#],
            reason: "Accelerate is a Python library; batches are split across ranks by the host itself (see host launch)",
        },
    ),
    (
        "parallelism_config",
        Answer::Refused {
            defaults: NONE,
            reason: "only data parallelism is available (host launch, torchrun); no tensor, context or FSDP parallelism",
        },
    ),
    (
        "dataloader_pin_memory",
        Answer::NoEffect("the data moves to the device once, before training, so no batch is copied from host memory"),
    ),
    (
        "remove_unused_columns",
        Answer::NoEffect("the model reads the fields it knows; plugins receive every field of the batch"),
    ),
    (
        "train_sampling_strategy",
        Answer::Refused {
            defaults: &["random"],
            reason: "only random sampling (seeded by data_seed) is available; group_by_length, sequential and batch_rebalance are not",
        },
    ),
    (
        "length_column_name",
        Answer::Refused { defaults: &["length"], reason: "only group_by_length reads it, which is not available" },
    ),
    (
        "ddp_find_unused_parameters",
        Answer::NoEffect("the host all-reduces every parameter's gradient, used in the step or not (zeros if unused)"),
    ),
    (
        "ddp_broadcast_buffers",
        Answer::NoEffect("rank 0's parameters are broadcast at the start; the built-in and pretrained models have no buffers"),
    ),
    (
        "ddp_static_graph",
        Answer::NoEffect("the host's gradient buckets are fixed at the start, as with a static graph"),
    ),
    (
        "fsdp",
        Answer::Refused {
            defaults: &["", "false", "[]"],
            reason: "FSDP is not available: the host shards data, not parameters (host launch for data parallelism)",
        },
    ),
    (
        "fsdp_config",
        Answer::Refused {
            defaults: NONE,
            reason: "FSDP is not available: the host shards data, not parameters (host launch for data parallelism)",
        },
    ),
    (
        "deepspeed",
        Answer::Refused {
            defaults: NONE,
            reason: "DeepSpeed is not available: the host shards data, not optimizer state or parameters",
        },
    ),
    (
        "debug",
        Answer::Refused {
            defaults: &["", "[]"],
            reason: "underflow_overflow and tpu_metrics_debug are not available; the host reports non-finite losses and gradients itself",
        },
    ),
    ("local_rank", Answer::NoEffect("the rank comes from LOCAL_RANK, which torchrun and host launch set")),
    (
        "dataloader_persistent_workers",
        Answer::NoEffect("the data-loading threads hold no state worth keeping; each epoch starts its own in a moment"),
    ),
    (
        "dataloader_in_order",
        Answer::Refused { defaults: &["true"], reason: "batches always come in order: the workers deal them out in turn and the training thread takes them so" },
    ),
    (
        "dataloader_multiprocessing_context",
        Answer::Refused { defaults: NONE, reason: "the host's data workers are threads, not processes (no fork, spawn or forkserver)" },
    ),
];

/// The answer for `name`, if it is one of these.
pub fn answer(name: &str) -> Option<Answer> {
    ANSWERS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// A value as the defaults above spell it: booleans lowercase (Python's `True` too),
/// JSON and TOML tables compact, strings as they are.
fn normalize(value: &toml::Value) -> String {
    let text = match value {
        toml::Value::String(s) => s.trim().to_owned(),
        toml::Value::Boolean(b) => return b.to_string(),
        other => return serde_json::to_string(other).unwrap_or_default().replace(' ', ""),
    };
    match text.as_str() {
        "True" | "False" => text.to_lowercase(),
        _ => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(json @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => json.to_string(),
            _ => text,
        },
    }
}

/// Takes these names out of a merged configuration table: fine ones go (those without
/// effect said in a log line), the first refused one is an error with its reason.
pub fn take_answered(table: &mut toml::Table, origin: &str) -> Result<(), InputError> {
    let given: Vec<String> = table.keys().filter(|k| answer(k).is_some()).cloned().collect();
    let mut without_effect = Vec::new();
    for name in given {
        let value = table.remove(&name).expect("a key just listed");
        let shown = normalize(&value);
        match answer(&name).expect("an answered name") {
            Answer::NoEffect(reason) => without_effect.push((name, shown, reason)),
            Answer::Refused { defaults, .. } if defaults.contains(&shown.as_str()) => {}
            Answer::Refused { reason, .. } => {
                return Err(InputError::new(format!("{origin}: {name} = {shown} is not supported: {reason}")))
            }
        }
    }
    // A whole TrainingArguments dump names many: one line then, each reason when few.
    match without_effect.len() {
        0 => {}
        1..=3 => {
            for (name, shown, reason) in &without_effect {
                tracing::info!("{name} = {shown}: no effect here: {reason}");
            }
        }
        n => {
            let names: Vec<&str> = without_effect.iter().map(|(name, _, _)| name.as_str()).collect();
            tracing::info!("{n} settings have no effect here: {} (given alone, each says why)", names.join(", "));
        }
    }
    Ok(())
}

/// The hidden flags for these names, collected as (name, value).
#[derive(Debug, Clone, Default)]
pub struct AnsweredFlags(pub Vec<(String, String)>);

impl AnsweredFlags {
    /// The flags given, as TOML strings (normalized when the table is read).
    pub fn to_table(&self) -> toml::Table {
        self.0.iter().map(|(name, value)| (name.clone(), toml::Value::String(value.clone()))).collect()
    }
}

impl FromArgMatches for AnsweredFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Vec::new();
        for (name, _) in ANSWERS {
            if let Ok(Some(value)) = matches.try_get_one::<String>(name) {
                given.push(((*name).to_owned(), value.clone()));
            }
        }
        Ok(Self(given))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for AnsweredFlags {
    fn augment_args(mut cmd: Command) -> Command {
        for (name, _) in ANSWERS {
            // clap keeps `&'static str` names; the kebab spellings are made once per process.
            let kebab: &'static str = Box::leak(name.replace('_', "-").into_boxed_str());
            cmd = cmd.arg(
                Arg::new(*name)
                    .long(kebab)
                    .alias(*name)
                    .num_args(0..=1)
                    .default_missing_value("true")
                    .action(ArgAction::Set)
                    .hide(true),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::arguments::{ARGUMENT_ALIASES, ARGUMENT_NAMES};

    /// tests/fixtures/training_arguments.txt: the fields of transformers 5.24's
    /// TrainingArguments (scripts/fixtures/training_argument_names.py).
    fn transformers_names() -> Vec<&'static str> {
        include_str!("../../../tests/fixtures/training_arguments.txt").lines().filter(|l| !l.is_empty()).collect()
    }

    #[test]
    fn every_transformers_name_is_an_argument_or_answered_and_nothing_else_is() {
        let names = transformers_names();
        assert_eq!(names.len(), 114, "transformers 5.24 has 114 TrainingArguments fields");
        for name in &names {
            let own = ARGUMENT_NAMES.contains(name) || ARGUMENT_ALIASES.iter().any(|(alias, _)| alias == name);
            assert!(own != answer(name).is_some(), "{name}: own argument {own}, answered {:?}", answer(name));
        }
        for (name, _) in ANSWERS {
            assert!(names.contains(name), "{name} is not a transformers 5.24 field");
        }
    }

    #[test]
    fn each_refusal_is_specific_and_defaults_pass() {
        for (name, answer) in ANSWERS {
            let reason = match answer {
                Answer::NoEffect(reason) | Answer::Refused { reason, .. } => reason,
            };
            assert!(reason.len() > 30 && !reason.ends_with('.'), "{name}: {reason}");
        }
        let mut table: toml::Table = toml::from_str(
            "push_to_hub = false\nhub_strategy = \"every_save\"\nfsdp = \"\"\ndataloader_in_order = \"True\"\nlocal_rank = -1\ngradient_checkpointing_kwargs = { use_reentrant = false }\nlearning_rate = 0.1",
        )
        .unwrap();
        take_answered(&mut table, "test").unwrap();
        assert_eq!(table.keys().collect::<Vec<_>>(), ["learning_rate"]);
        let mut table: toml::Table = toml::from_str("torch_compile = true").unwrap();
        let error = take_answered(&mut table, "config").unwrap_err().to_string();
        assert_eq!(
            error,
            "config: torch_compile = true is not supported: torch.compile is a Python compiler, not part of libtorch; the host's loop is already native code"
        );
        let mut table: toml::Table =
            toml::from_str("activation_checkpointing_kwargs = '{\"every_n_layers\": 2}'").unwrap();
        assert!(take_answered(&mut table, "flags").unwrap_err().to_string().contains("no every_n_layers"));
    }
}
