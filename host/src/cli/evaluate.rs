//! `host eval` and `host predict`: a checkpoint's model on its run's evaluation data, or
//! on a file given with --eval-file (--test-file).

use std::io::Write;

use anyhow::Result;

use super::train::write_metrics;
use super::{CheckpointOptions, PredictOptions};
use crate::engine::trainer::Trainer;

/// `host eval --checkpoint DIR`.
pub fn evaluate(options: &CheckpointOptions) -> Result<()> {
    let mut trainer = Trainer::from_checkpoint(&options.checkpoint, options.data_file.as_deref())?;
    let (metrics, _) = trainer.evaluate()?;
    let mut out = std::io::stdout().lock();
    write_metrics(&mut out, "eval metrics", &metrics)?;
    for (name, report) in trainer.metric_reports() {
        writeln!(out, "{name} report: {report}")?;
    }
    Ok(())
}

/// `host predict --checkpoint DIR --output FILE`.
pub fn predict(options: &PredictOptions) -> Result<()> {
    let options_data = options.checkpoint.data_file.as_deref();
    let mut trainer = Trainer::from_checkpoint(&options.checkpoint.checkpoint, options_data)?;
    let metrics = trainer.predict(&options.output)?;
    write_metrics(&mut std::io::stdout().lock(), "test metrics", &metrics)?;
    println!("predictions: {}", options.output.display());
    for (name, _) in trainer.metric_reports() {
        println!("{name} report: {}", Trainer::report_next_to(&options.output, name).display());
    }
    Ok(())
}
