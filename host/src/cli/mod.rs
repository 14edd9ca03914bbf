//! The command line: the flags and subcommands (clap), and what each command does. The
//! rest of the host never sees these types: a command resolves them into a
//! `ResolvedConfig` or plain values first.

mod evaluate;
mod generate;
mod launch;
mod plugins;
mod scaffold;
mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::arguments::TrainingFlags;
use crate::config::hf_arguments::AnsweredFlags;

const ABOUT: &str = "Train models with Hugging Face Trainer semantics in one native binary, with losses \
and callbacks loaded from plugin libraries at run time.";

const AFTER_HELP: &str = "\
Settings are resolved in layers, later ones winning: Hugging Face's TrainingArguments defaults, \
the default job's preset (the first [default: ...] above; it applies only without train_file, \
whose runs start from Hugging Face's defaults, shown after it), the --config TOML file, then flags.

A TOML config uses the same names, for example:
    num_train_epochs = 5
    learning_rate = 1e-3
    plugin = [\"target/release/libweighted_ce.so\"]
    loss = \"weighted_ce\"
    [plugin_config.weighted_ce]
    weights = [1.0, 2.0, 3.0]

Examples:
    host --plugin target/release/libweighted_ce.so
    host --plugin target/release/libweighted_ce.so --plugin-config weighted_ce.label_smoothing=0.1
    host train --config run.toml --learning-rate 1e-3
    host --train-file data.safetensors --eval-file eval.safetensors
    host --model cnn
    host --model gpt --train-file corpus.jsonl --tokenizer-file tokenizer.json
    host --model torchscript:model.pt --train-file data.parquet
    host --model-name-or-path models/Qwen2.5-0.5B --train-file reviews.jsonl --num-labels 3
    host generate --model output --prompt \"Once upon a time\"
    host generate --model output --prompt \"Hi\" --chat --do-sample --top-p 0.9 --seed 1
    host plot output

Distributed data parallel (Gloo on CPU, NCCL on CUDA):
    host launch --nproc-per-node 2 -- --plugin weighted_ce
    torchrun --nproc-per-node 2 --no-python host --plugin weighted_ce
Multi-node: run on each node, with its --node-rank and node 0's address:
    host launch --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --nproc-per-node 8 -- ...

Log verbosity follows RUST_LOG (default: info; ranks other than 0 log warnings only).";

#[derive(Debug, Parser)]
#[command(name = "host", version, about = ABOUT, after_help = AFTER_HELP)]
#[command(args_conflicts_with_subcommands = true)]
// As argparse (HF's parser): a flag given twice keeps its last value. Repeatable flags
// (--plugin, --callback, --metric, --batch-transform, --plugin-config) still collect every value.
#[command(args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Training options, when no subcommand is given (same as `host train`).
    #[command(flatten)]
    pub train: TrainOptions,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the default job (the same as giving no subcommand).
    Train(Box<TrainOptions>),
    /// Evaluate a checkpoint on its run's evaluation data (from the checkpoint alone).
    Eval(CheckpointOptions),
    /// Predict with a checkpoint on its run's evaluation data: one JSON line per example,
    /// or with --output FILE.safetensors the logits and labels (HF's predictions, label_ids).
    Predict(PredictOptions),
    /// Draw a run's charts (loss, learning rate, gradient norm, evaluation metrics) as PNG
    /// files in OUTPUT_DIR/plots, from its log history; also while it is running.
    Plot {
        /// The run's output_dir.
        #[arg(value_name = "OUTPUT_DIR")]
        output_dir: PathBuf,
    },
    /// Complete a prompt greedily with a causal language model folder (a run's output_dir
    /// or checkpoint of a pretrained model, or any Hugging Face model folder).
    Generate(generate::GenerateOptions),
    /// Start this node's ranks of a distributed run (as torchrun does): `host launch
    /// --nproc-per-node 2 -- --plugin weighted_ce`. Each rank is `host train` with
    /// torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set.
    Launch(launch::LaunchOptions),
    /// List the plugins found by name, or describe one.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Create a plugin crate that builds against this host's plugin-api, with a working
    /// example, a unit test and a README.
    NewPlugin {
        /// The crate's and the component's name (lowercase, digits, _).
        name: String,
        /// What the plugin provides.
        #[arg(long, value_enum)]
        kind: scaffold::Kind,
        /// Where to create it (the crate goes in DIR/NAME).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// The plugins in HOST_PLUGIN_PATH and next to the host binary.
    List,
    /// What a plugin is, what it was built against and what it provides.
    Inspect {
        /// A .so file or a plugin name.
        #[arg(value_name = "FILE|NAME")]
        plugin: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CheckpointOptions {
    /// A checkpoint folder (output_dir/checkpoint-N).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Data to evaluate or predict on instead of the run's evaluation data, in any form
    /// the run could train on (labeled as the run's data is).
    #[arg(long = "eval-file", visible_alias = "test-file", value_name = "FILE")]
    pub data_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct PredictOptions {
    #[command(flatten)]
    pub checkpoint: CheckpointOptions,
    /// Where to write the predictions: JSONL (index, label, prediction, probabilities), or
    /// a .safetensors file of `predictions` (logits) and `label_ids`.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Default, Args)]
// HF's own defaults are negative numbers (`--max-steps -1`): read them as values. This
// holds for `host train` and for the top level, where these options are flattened.
#[command(allow_negative_numbers = true)]
pub struct TrainOptions {
    /// A plugin to load: a .so file, or a name (weighted_ce) found in HOST_PLUGIN_PATH or
    /// next to the host binary. Repeat for several; their components are available to
    /// --loss and --callback.
    #[arg(long = "plugin", value_name = "PATH|NAME", help_heading = "Plugins")]
    pub plugins: Vec<PathBuf>,

    /// The loss component to train with; `builtin` is the host's cross entropy. Default:
    /// the only loss the loaded plugins provide, or the built-in one when they provide none.
    #[arg(long, value_name = "NAME", help_heading = "Plugins")]
    pub loss: Option<String>,

    /// A callback component to use; repeat for several, called in the order given.
    /// Default: every callback the loaded plugins provide.
    #[arg(long = "callback", value_name = "NAME", help_heading = "Plugins")]
    pub callbacks: Vec<String>,

    /// A metric component to evaluate with (compute_metrics); repeat for several. Its
    /// results are logged as eval_NAME. Default: every metric the loaded plugins provide.
    #[arg(long = "metric", value_name = "NAME", help_heading = "Plugins")]
    pub metrics: Vec<String>,

    /// A batch transform (augmentation such as mixup) applied to each training batch;
    /// repeat for several, applied in the order given. Default: every batch transform the
    /// loaded plugins provide. A plugin optimizer is chosen with --optim plugin:NAME, a
    /// plugin schedule with --lr-scheduler-type plugin:NAME.
    #[arg(long = "batch-transform", value_name = "NAME", help_heading = "Plugins")]
    pub batch_transforms: Vec<String>,

    /// A component's setting, NAME.KEY=VALUE with a TOML value, e.g.
    /// weighted_ce.weights=[1,2,3]. Repeat for several.
    #[arg(long = "plugin-config", value_name = "NAME.KEY=VALUE", help_heading = "Plugins")]
    pub plugin_config: Vec<String>,

    /// A TOML file of training arguments and plugin settings; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the resolved configuration as TOML (usable with --config) and exit.
    #[arg(long)]
    pub print_config: bool,

    #[command(flatten)]
    pub training: TrainingFlags,

    /// The other TrainingArguments names (hidden; see config::hf_arguments).
    #[command(flatten)]
    pub answered: AnsweredFlags,
}

/// Parses the command line, showing each training argument's default in --help.
pub fn parse() -> Cli {
    let defaults = crate::config::layers::hf_defaults();
    let annotate = |mut cmd: clap::Command| {
        for name in crate::config::arguments::ARGUMENT_NAMES {
            if let Some(shown) = crate::config::preset::help_default(name, &defaults) {
                cmd = cmd.mut_arg(*name, |arg| {
                    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                    arg.help(format!("{help} {shown}"))
                });
            }
        }
        cmd
    };
    let command = annotate(Cli::command()).mut_subcommand("train", annotate);
    let matches = command.try_get_matches().unwrap_or_else(|e| exit_for(e));
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// clap's error, except for an unknown argument whose suggested one is far from it
/// (`--using-ema` is no `--run-name`): that gets where such settings go instead.
fn exit_for(error: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() == ErrorKind::UnknownArgument {
        if let Some(ContextValue::String(given)) = error.get(ContextKind::InvalidArg) {
            let name = given.trim_start_matches('-');
            let close = match error.get(ContextKind::SuggestedArg) {
                Some(ContextValue::String(suggested)) => {
                    strsim::normalized_damerau_levenshtein(name, suggested.trim_start_matches('-')) >= 0.7
                }
                _ => false,
            };
            if !close && given.starts_with("--") {
                eprintln!(
                    "error: unexpected argument '{given}': no training argument of the host is named so (`host --help` lists them); a plugin's settings go in --plugin-config NAME.KEY=VALUE (`host plugins inspect NAME` lists its keys)"
                );
                std::process::exit(2);
            }
        }
    }
    error.exit()
}

impl Cli {
    /// Whether the command trains (it then handles SIGINT and SIGTERM itself).
    pub fn trains(&self) -> bool {
        matches!(self.command, None | Some(Command::Train(_)))
    }
}

/// Runs the command; returns the process's exit code (launch passes on its ranks').
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Some(Command::Train(options)) => train::train(&options)?,
        None => train::train(&cli.train)?,
        Some(Command::Eval(options)) => evaluate::evaluate(&options)?,
        Some(Command::Predict(options)) => evaluate::predict(&options)?,
        Some(Command::Generate(options)) => generate::generate(&options)?,
        Some(Command::Plugins(command)) => plugins::run(&command)?,
        Some(Command::Plot { output_dir }) => {
            if !output_dir.join("log_history.jsonl").is_file() {
                return Err(crate::error::InputError::new(format!(
                    "{} has no log_history.jsonl: give the output_dir of a run",
                    output_dir.display()
                ))
                .into());
            }
            println!("plots: {}", crate::engine::plots::write(&output_dir)?.display());
        }
        Some(Command::Launch(options)) => return launch::run(&options),
        Some(Command::NewPlugin { name, kind, dir }) => {
            let root = scaffold::create(&name, kind, &dir)?;
            let library = scaffold::shared_target_dir().join(format!("release/lib{name}.so"));
            println!("created {} ({name}): cd there, then cargo build --release", root.display());
            println!("the library: {} (a build folder all new plugins share)", library.display());
        }
    }
    Ok(0)
}
