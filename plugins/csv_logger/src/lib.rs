//! `csv_logger`: writes one CSV row per log event (what on_log receives), with stable
//! columns: the header is fixed when the file is created, a value without a column is left
//! out, a column without a value is left empty.
//!
//! Config: `path` (default `{output_dir}/log.csv`), `columns` (default: step, epoch, loss,
//! grad_norm, learning_rate, eval_loss, eval_accuracy, train_loss, train_runtime).

use std::fs::File;
use std::io::{BufWriter, Write};

use plugin_api::prelude::*;

const DEFAULT_COLUMNS: &[&str] = &[
    "step",
    "epoch",
    "loss",
    "grad_norm",
    "learning_rate",
    "eval_loss",
    "eval_accuracy",
    "train_loss",
    "train_runtime",
];

#[derive(Deserialize, JsonSchema, Default)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// CSV file to write; unset writes log.csv in the output directory.
    path: Option<String>,
    /// Columns to write, in order; unset: step, epoch, loss, grad_norm, learning_rate, eval_loss,
    /// eval_accuracy, train_loss, train_runtime.
    columns: Option<Vec<String>>,
}

struct CsvLogger {
    path: Option<String>,
    columns: Vec<String>,
    file: Option<BufWriter<File>>,
}

impl CsvLogger {
    fn new(config: Config) -> Result<Self, PluginError> {
        let columns = config.columns.unwrap_or_else(|| DEFAULT_COLUMNS.iter().map(|c| c.to_string()).collect());
        if columns.is_empty() {
            return Err(PluginError::config("columns must name at least one column"));
        }
        Ok(Self { path: config.path, columns, file: None })
    }
}

impl Callback for CsvLogger {
    fn on_train_begin(
        &mut self,
        args: &TrainingArguments,
        state: &TrainerState,
        _: &mut TrainerControl,
    ) -> Result<(), PluginError> {
        // One file per run: in a distributed run, the first rank writes it.
        if !state.is_world_process_zero {
            return Ok(());
        }
        let path = self.path.clone().unwrap_or_else(|| format!("{}/log.csv", args.output_dir));
        if let Some(parent) = std::path::Path::new(&path).parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::create(&path).map_err(|e| PluginError::config(format!("cannot create {path}: {e}")))?;
        let mut file = BufWriter::new(file);
        writeln!(file, "{}", self.columns.join(","))?;
        self.file = Some(file);
        Ok(())
    }

    fn on_log(
        &mut self,
        _: &TrainingArguments,
        state: &TrainerState,
        _: &mut TrainerControl,
        logs: &Metrics,
    ) -> Result<(), PluginError> {
        let Some(file) = &mut self.file else { return Ok(()) };
        let cells: Vec<String> = self
            .columns
            .iter()
            .map(|column| match column.as_str() {
                "step" => state.global_step.to_string(),
                name => logs.get(name).map(|v| v.to_string()).unwrap_or_default(),
            })
            .collect();
        writeln!(file, "{}", cells.join(","))?;
        file.flush()?;
        Ok(())
    }
}

export_plugin! {
    callbacks: { "csv_logger" => CsvLogger::new },
}
