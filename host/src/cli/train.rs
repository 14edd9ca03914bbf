//! `host train` (and `host` alone): resolve the configuration, load the plugins and data,
//! train, and write the run's results.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use anyhow::Result;

use super::TrainOptions;
use crate::config::layers::PluginSelection;
use crate::config::{layers, ResolvedConfig};
use crate::engine::callbacks::CallbackHandler;
use crate::engine::data;
use crate::engine::data::transform::BatchTransform;
use crate::engine::device::device_name;
use crate::engine::distributed::{Distributed, WorldEnv};
use crate::engine::metric::Metric;
use crate::engine::output::{write_text_atomically, OutputDir};
use crate::engine::report::{self, Reporter};
use crate::engine::trainer::{Outcome, Trainer, TrainerSetup};
use crate::fatal;
use crate::plugins::selection::{self, Components};

/// Hugging Face's defaults, the default job's preset (when no training data is named), the
/// config file, then the flags: later layers win.
pub fn resolve_config(options: &TrainOptions) -> Result<ResolvedConfig> {
    let mut user = toml::Table::new();
    let mut origin = "flags".to_owned();
    if let Some(path) = &options.config {
        layers::merge(&mut user, layers::read_config_file(path)?);
        origin = format!("config {} or flags", path.display());
    }
    let mut flags = options.training.to_table()?;
    layers::merge(&mut flags, options.answered.to_table());
    let selection = PluginSelection {
        plugins: options.plugins.clone(),
        loss: options.loss.clone(),
        callbacks: options.callbacks.clone(),
        metrics: options.metrics.clone(),
        batch_transforms: options.batch_transforms.clone(),
        ..Default::default()
    };
    layers::insert_selection(&mut flags, &selection);
    layers::merge(&mut user, flags);
    for spec in &options.plugin_config {
        layers::merge(&mut user, layers::plugin_config_flag(spec)?);
    }
    ResolvedConfig::from_table(layers::with_defaults(user), &origin)
}

/// log_level (rank 0) or log_level_replica (the other ranks), where they ask for a level.
fn apply_log_level(args: &crate::config::arguments::TrainingArguments) {
    let level = if crate::logging::is_replica() {
        // The default ("warning") is what replicas log anyway; only another choice acts.
        Some(args.log_level_replica.as_str()).filter(|level| *level != "warning")
    } else {
        Some(args.log_level.as_str())
    };
    if let Some(Ok(Some(directive))) = level.map(crate::config::arguments::log_filter) {
        crate::logging::set_level(directive);
    }
}

pub fn train(options: &TrainOptions) -> Result<()> {
    // First of all: a signal during start-up must find the handlers in place.
    let stop_signal = install_signal_handlers()?;
    let config = resolve_config(options)?;
    apply_log_level(&config.args);
    if options.print_config {
        print!("{}", toml::to_string(&config.to_table()?)?);
        return Ok(());
    }
    let world = WorldEnv::from_env()?;
    let device = match &world {
        Some(world) => config.device.for_rank(world.local_rank)?,
        None => config.device.select()?,
    };
    let components = selection::build(&config.plugins, &serde_json::to_string(&config.args)?)?;
    log_components(&device_name(device), &components);
    let (train, eval) = data::load(&config.data)?;
    let dist = match world {
        Some(world) => {
            let fingerprint = serde_json::to_string(&config.to_table()?)?;
            Some(Distributed::connect(world, device, &config.distributed, &fingerprint)?)
        }
        None => None,
    };
    // Only the first rank writes the run's files, and holds output_dir for the run.
    let writes = dist.as_ref().is_none_or(|d| d.rank() == 0);
    let output = if writes { Some(OutputDir::hold(Path::new(&config.args.output_dir))?) } else { None };
    let reporter = output.as_ref().map_or_else(Reporter::console_only, |o| Reporter::create(o.path()));
    let Components { loss, callbacks, overrides, .. } = components;
    let callbacks = CallbackHandler::new(callbacks);
    let phases = Phases::of(&config.args);
    if phases.predict && dist.is_some() {
        return Err(crate::error::InputError::new(
            "do_predict is not available in a distributed run yet: predict afterwards with host predict --checkpoint DIR --output FILE",
        )
        .into());
    }
    if config.args.auto_find_batch_size && dist.is_some() {
        // One rank retrying a step while the others wait in its all-reduce would hang.
        return Err(crate::error::InputError::new(
            "auto_find_batch_size is not available in a distributed run yet: set per_device_train_batch_size and gradient_accumulation_steps",
        )
        .into());
    }
    let setup = TrainerSetup { config, device, train, eval, loss, callbacks, overrides, reporter, stop_signal, dist };
    let mut trainer = Trainer::new(setup)?;
    let training = fatal::TrainingRun::start();
    let mut outcome = match phases.train {
        true => trainer.train()?,
        false => Outcome { train_metrics: Vec::new(), eval_metrics: None, already_complete: false },
    };
    if outcome.already_complete {
        return Ok(());
    }
    if let Some(output) = &output {
        crate::engine::output::begin_final_files(output.path())?;
    }
    // As HF's example scripts: evaluate and predict after training, each with its file.
    let mut extra = Vec::new();
    if phases.eval {
        let (metrics, _) = trainer.evaluate()?;
        outcome.eval_metrics = Some(metrics.clone());
        extra.push(("eval_results.json", metrics));
    }
    if let (true, Some(output)) = (phases.predict, &output) {
        let metrics = trainer.predict(&output.path().join("predictions.jsonl"))?;
        extra.push(("predict_results.json", metrics));
    }
    if let Some(output) = output {
        let results = match phases.train {
            true => save_results(&mut trainer, &outcome, output.path())?,
            false => output.path().join("all_results.json"),
        };
        for (file, metrics) in &extra {
            write_metrics_file(&output.path().join(file), metrics)?;
            merge_metrics_file(&results, metrics)?;
        }
        crate::engine::output::finish_final_files(output.path(), trainer.run.state.global_step)?;
        print_summary(&outcome, &results)?;
        // Charts are for looking at: a failure to draw them is said, not fatal.
        match crate::engine::plots::write(output.path()) {
            Ok(dir) => tracing::info!("plots: {}", dir.display()),
            Err(error) => tracing::warn!("no plots: {error:#}"),
        }
        for (file, metrics) in extra.iter().filter(|(file, _)| *file == "predict_results.json") {
            write_metrics(&mut std::io::stdout().lock(), "test metrics", metrics)?;
            println!("predictions: {} ({file})", output.path().join("predictions.jsonl").display());
        }
    }
    drop(training);
    Ok(())
}

/// What the run does: HF's do_train (default: yes, unlike HF's scripts, since training
/// is what the host is for), do_eval and do_predict.
struct Phases {
    train: bool,
    eval: bool,
    predict: bool,
}

impl Phases {
    fn of(args: &crate::config::arguments::TrainingArguments) -> Self {
        Self { train: args.do_train != Some(false), eval: args.do_eval, predict: args.do_predict }
    }
}

/// `metrics` as a JSON object file (HF's save_metrics).
fn write_metrics_file(path: &Path, metrics: &[(String, f64)]) -> Result<()> {
    let object: serde_json::Map<String, serde_json::Value> =
        metrics.iter().map(|(name, value)| (name.clone(), serde_json::json!(value))).collect();
    write_text_atomically(path, &(serde_json::to_string_pretty(&object)? + "\n"))
}

/// Adds `metrics` to all_results.json (HF's save_metrics does the same).
fn merge_metrics_file(path: &Path, metrics: &[(String, f64)]) -> Result<()> {
    let mut all: Vec<(String, f64)> = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).ok())
        .map(|map| map.into_iter().filter_map(|(k, v)| v.as_f64().map(|v| (k, v))).collect())
        .unwrap_or_default();
    for (name, value) in metrics {
        all.retain(|(n, _)| n != name);
        all.push((name.clone(), *value));
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    write_metrics_file(path, &all)
}

fn log_components(device: &str, components: &Components) {
    tracing::info!("device: {device}");
    for plugin in &components.plugins {
        tracing::info!("plugin: {} {} ({})", plugin.name(), plugin.version(), plugin.path.display());
    }
    match &components.loss {
        Some(loss) => tracing::info!("loss: {} (plugin {})", loss.name, loss.plugin),
        None => tracing::info!("loss: built-in cross entropy"),
    }
    for callback in &components.callbacks {
        tracing::info!("callback: {} (plugin {})", callback.name, callback.plugin);
    }
    let overrides = &components.overrides;
    for metric in &overrides.metrics {
        tracing::info!("metric: {}", metric.name());
    }
    if let Some(optimizer) = &overrides.optimizer {
        tracing::info!("optimizer: {}", optimizer.name());
    }
    if let Some(scheduler) = &overrides.scheduler {
        tracing::info!("lr schedule: {}", scheduler.name());
    }
    for transform in &overrides.batch_transforms {
        tracing::info!("batch transform: {}", transform.name());
    }
    if let Some(model) = &overrides.model {
        tracing::info!("model: {} (plugin)", model.name());
    }
}

/// As HF's `trainer.save_model()`, `save_state()` and `save_metrics("all")`: the final
/// weights, the final state with the callbacks' states, and every metric. Returns where
/// the metrics went.
fn save_results(trainer: &mut Trainer, outcome: &Outcome, output_dir: &Path) -> Result<std::path::PathBuf> {
    trainer.save_model(output_dir)?;
    trainer.save_merged()?;
    let (state, _) = trainer.trainer_state_record()?;
    let state = serde_json::to_string_pretty(&serde_json::to_value(state)?)? + "\n";
    write_text_atomically(&output_dir.join("trainer_state.json"), &state)?;
    let mut results = serde_json::Map::new();
    for (name, value) in outcome.train_metrics.iter().chain(outcome.eval_metrics.iter().flatten()) {
        results.insert(name.clone(), serde_json::json!(value));
    }
    let results_path = output_dir.join("all_results.json");
    write_text_atomically(&results_path, &(serde_json::to_string_pretty(&results)? + "\n"))?;
    Ok(results_path)
}

fn print_summary(outcome: &Outcome, results: &Path) -> Result<()> {
    let mut out = std::io::stdout().lock();
    write_metrics(&mut out, "train metrics", &outcome.train_metrics)?;
    if let Some(eval) = &outcome.eval_metrics {
        write_metrics(&mut out, "eval metrics", eval)?;
    }
    writeln!(out, "results: {}", results.display())?;
    Ok(())
}

/// Metrics under a title, as HF's `log_metrics` prints them.
pub(super) fn write_metrics(out: &mut impl Write, title: &str, metrics: &[(String, f64)]) -> Result<()> {
    writeln!(out, "***** {title} *****")?;
    for (name, value) in metrics {
        writeln!(out, "  {name:<26} = {}", report::show(name, *value))?;
    }
    Ok(())
}

/// SIGINT and SIGTERM ask the run to stop after the current optimizer step, with a
/// checkpoint; a second one ends the process at once (exit 130 or 143). Checkpoints are
/// written atomically, so even that never leaves a half-written one. The first signal is
/// answered at once, naming a plugin call that keeps the step from ending.
fn install_signal_handlers() -> Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::sync::atomic::AtomicBool;
    let which = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&asked))?;
        signal_hook::flag::register_usize(signal, Arc::clone(&which), signal as usize)?;
        signal_hook::flag::register(signal, Arc::clone(&asked))?;
    }
    if let Some(signal) = fatal::take_early_stop() {
        which.store(signal as usize, std::sync::atomic::Ordering::SeqCst);
        asked.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".to_owned()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
            match fatal::current_call() {
                Some((call, running)) => tracing::warn!(
                    "{name}: stopping after the current step, with a checkpoint; {call} has been running for {:.1} s; a second signal exits at once",
                    running.as_secs_f64()
                ),
                None => tracing::warn!(
                    "{name}: stopping after the current step, with a checkpoint; a second signal exits at once"
                ),
            }
        }
    })?;
    Ok(which)
}
