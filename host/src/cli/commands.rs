//! `host train`: resolve the configuration, load plugins, train, report.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::config::arguments::TrainingArguments;
use crate::engine::callbacks::CallbackHandler;
use crate::cli::{CheckpointOptions, PredictOptions, TrainOptions};
use crate::config::layers::{self as config, RunConfig};
use crate::engine::trainer::{Trainer, TrainerSetup};
use crate::config::preset as job;
use crate::engine::{data, device, report};
use crate::plugins::selection as components;

/// HF defaults with the default job's preset over them.
pub fn default_table() -> toml::Table {
    let mut table = toml::Value::try_from(TrainingArguments::default())
        .ok()
        .and_then(|v| v.as_table().cloned())
        .unwrap_or_default();
    config::merge(&mut table, job::digits_preset());
    table
}

/// Defaults, preset, config file, flags: later layers win.
pub fn resolve_config(options: &TrainOptions) -> Result<RunConfig> {
    let mut table = default_table();
    let mut origin = "flags".to_owned();
    if let Some(path) = &options.config {
        config::merge(&mut table, config::read_config_file(path)?);
        origin = format!("config {} or flags", path.display());
    }
    let mut flags = options.training.to_table();
    insert_selection(&mut flags, &options.plugins, options.loss.as_deref(), &options.callbacks);
    config::merge(&mut table, flags);
    for spec in &options.plugin_config {
        config::merge(&mut table, config::plugin_config_flag(spec)?);
    }
    config::resolve(table, &origin)
}

/// The plugin keys of a config table, from plugin paths, loss and callback names; lists
/// that are empty stay out (so that a layer below them still counts).
fn insert_selection(table: &mut toml::Table, plugins: &[std::path::PathBuf], loss: Option<&str>, callbacks: &[String]) {
    if !plugins.is_empty() {
        let paths = plugins.iter().map(|p| toml::Value::String(p.display().to_string())).collect();
        table.insert("plugin".to_owned(), toml::Value::Array(paths));
    }
    if let Some(loss) = loss {
        table.insert("loss".to_owned(), toml::Value::String(loss.to_owned()));
    }
    if !callbacks.is_empty() {
        table.insert(
            "callback".to_owned(),
            toml::Value::Array(callbacks.iter().cloned().map(toml::Value::String).collect()),
        );
    }
}

/// The resolved configuration as a table that `--config` accepts.
fn config_as_table(config: &RunConfig) -> Result<toml::Table> {
    let mut table = toml::Value::try_from(&config.args)?.as_table().cloned().unwrap_or_default();
    let selection = &config.selection;
    insert_selection(&mut table, &selection.plugins, selection.loss.as_deref(), &selection.callbacks);
    if !selection.component_config.is_empty() {
        let components = toml::Value::try_from(&selection.component_config)?;
        table.insert("plugin_config".to_owned(), components);
    }
    Ok(table)
}

/// The run's training and evaluation data (the digits set, split as the arguments say).
/// The run's training and evaluation data: files the arguments name, or the embedded
/// digits; without an eval_file, a fixed-seed split of the training data.
fn datasets(args: &TrainingArguments) -> Result<(data::Dataset, data::Dataset)> {
    let options = data::FileOptions {
        label_column: args.label_column.clone(),
        feature_columns: args
            .feature_columns
            .as_ref()
            .map(|columns| columns.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()),
        text_column: args.text_column.clone(),
        tokenizer_file: args.tokenizer_file.clone(),
        max_seq_length: args.max_seq_length,
        generation_separator: args.generation_separator.clone(),
    };
    let train = match &args.train_file {
        Some(file) => data::load_file(Path::new(file), &options)?,
        None => data::load_digits()?,
    };
    Ok(match &args.eval_file {
        Some(file) => {
            let eval = data::load_file(Path::new(file), &options)?;
            data::limit(train, eval, args.max_train_samples, args.max_eval_samples)
        }
        None => data::split(&train, args.validation_split_percentage, args.max_train_samples, args.max_eval_samples),
    })
}

pub fn train(options: &TrainOptions) -> Result<()> {
    let config = resolve_config(options)?;
    if options.print_config {
        print!("{}", toml::to_string(&config_as_table(&config)?)?);
        return Ok(());
    }
    let args = config.args.clone();
    let world = crate::engine::distributed::WorldEnv::from_env()?;
    let device = match &world {
        Some(world) => device::rank_device(&args.device, world.local_rank)?,
        None => device::select_device(&args.device)?,
    };
    let args_json = serde_json::to_string(&args)?;
    let components = components::build(&config.selection, &args_json)?;
    tracing::info!("device: {}", device::device_name(device));
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

    let (train_set, eval_set) = datasets(&args)?;
    let output_dir = Path::new(&args.output_dir);
    let run_config = serde_json::to_value(config_as_table(&config)?)?;
    let stop_signal = install_signal_handlers()?;
    let dist = match world {
        Some(world) => {
            let timeout = std::time::Duration::from_secs(args.ddp_timeout as u64);
            let fingerprint = run_config.to_string();
            Some(crate::engine::distributed::Distributed::connect(
                world,
                device,
                args.ddp_backend.as_deref(),
                timeout,
                &fingerprint,
            )?)
        }
        None => None,
    };
    // Only the first rank writes the run's files.
    let writes = dist.as_ref().is_none_or(|d| d.rank() == 0);
    let reporter = if writes { report::Reporter::create(output_dir)? } else { report::Reporter::console_only() };
    let handler = CallbackHandler::new(components.callbacks);
    let mut trainer = Trainer::new(TrainerSetup {
        args: args.clone(),
        device,
        train: train_set,
        eval: eval_set,
        loss: components.loss,
        handler,
        reporter,
        run_config,
        stop_signal,
        dist,
    })?;
    let outcome = trainer.train()?;
    if !writes {
        return Ok(());
    }

    let mut results = serde_json::Map::new();
    let all_metrics = outcome.train_metrics.iter().chain(outcome.eval_metrics.iter().flatten());
    for (name, value) in all_metrics {
        results.insert(name.clone(), serde_json::json!(value));
    }
    // As HF's `trainer.save_model()` and `trainer.save_state()`: the final weights, and the
    // final state with the callbacks' states.
    trainer.save_model(&output_dir.join("model.safetensors"))?;
    let state_path = output_dir.join("trainer_state.json");
    std::fs::write(&state_path, serde_json::to_string_pretty(&trainer.trainer_state_json()?)? + "\n")
        .with_context(|| format!("cannot write {}", state_path.display()))?;
    let results_path = output_dir.join("all_results.json");
    std::fs::write(&results_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("cannot write {}", results_path.display()))?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "***** train metrics *****")?;
    for (name, value) in &outcome.train_metrics {
        writeln!(out, "  {name:<26} = {}", report::show(name, *value))?;
    }
    if let Some(eval) = &outcome.eval_metrics {
        writeln!(out, "***** eval metrics *****")?;
        for (name, value) in eval {
            writeln!(out, "  {name:<26} = {}", report::show(name, *value))?;
        }
    }
    writeln!(out, "results: {}", results_path.display())?;
    Ok(())
}

/// SIGINT and SIGTERM ask the run to stop after the current optimizer step, with a
/// checkpoint; a second one ends the process at once (exit 130 or 143). Checkpoints are
/// written atomically, so even that never leaves a half-written one.
fn install_signal_handlers() -> Result<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;
    let which = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&asked))?;
        signal_hook::flag::register_usize(signal, Arc::clone(&which), signal as usize)?;
        signal_hook::flag::register(signal, Arc::clone(&asked))?;
    }
    Ok(which)
}

/// A trainer rebuilt from a checkpoint alone: its run's configuration (plugins included)
/// and its weights. Writes nothing to the run's output_dir.
fn trainer_from_checkpoint(options: &CheckpointOptions) -> Result<Trainer> {
    let dir = &options.checkpoint;
    if !dir.is_dir() {
        return Err(crate::error::InputError::new(format!("checkpoint {} does not exist", dir.display())).into());
    }
    crate::engine::checkpoint::verify(dir)
        .map_err(|problem| crate::error::InputError::new(format!("checkpoint: {problem}")))?;
    let saved = crate::engine::checkpoint::read_json(dir, "host_state.json")?;
    let table = match toml::Value::try_from(&saved["run_config"]) {
        Ok(toml::Value::Table(table)) => table,
        _ => {
            return Err(crate::error::InputError::new(format!(
                "checkpoint {}: host_state.json has no run configuration",
                dir.display()
            ))
            .into())
        }
    };
    let mut config = config::resolve(table, &format!("checkpoint {}", dir.display()))?;
    config.args.init_weights = Some(dir.join("model.safetensors").display().to_string());
    config.args.resume_from_checkpoint = None;
    let args = config.args.clone();
    let device = device::select_device(&args.device)?;
    let components = components::build(&config.selection, &serde_json::to_string(&args)?)?;
    let (train_set, eval_set) = datasets(&args)?;
    let handler = CallbackHandler::new(components.callbacks);
    let run_config = saved["run_config"].clone();
    let never_stopped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut trainer = Trainer::new(TrainerSetup {
        args,
        device,
        train: train_set,
        eval: eval_set,
        loss: components.loss,
        handler,
        reporter: report::Reporter::console_only(),
        run_config,
        stop_signal: never_stopped,
        dist: None,
    })?;
    // Callbacks and metrics see the step and epoch the checkpoint was made at.
    let state = crate::engine::checkpoint::read_json(dir, "trainer_state.json")?;
    trainer.state.global_step = state["global_step"].as_i64().unwrap_or(0);
    trainer.state.epoch = state["epoch"].as_f64().unwrap_or(0.0);
    trainer.state.max_steps = state["max_steps"].as_i64().unwrap_or(0);
    Ok(trainer)
}

/// `host eval --checkpoint DIR`.
pub fn evaluate(options: &CheckpointOptions) -> Result<()> {
    let mut trainer = trainer_from_checkpoint(options)?;
    let metrics = trainer.evaluate()?;
    print_metrics("eval metrics", &metrics)
}

/// `host predict --checkpoint DIR --output FILE`.
pub fn predict(options: &PredictOptions) -> Result<()> {
    let mut trainer = trainer_from_checkpoint(&options.checkpoint)?;
    let metrics = trainer.predict(&options.output)?;
    print_metrics("test metrics", &metrics)?;
    println!("predictions: {}", options.output.display());
    Ok(())
}

fn print_metrics(title: &str, metrics: &[(String, f64)]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "***** {title} *****")?;
    for (name, value) in metrics {
        writeln!(out, "  {name:<26} = {}", report::show(name, *value))?;
    }
    Ok(())
}
