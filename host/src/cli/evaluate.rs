//! `host eval` and `host predict`: a checkpoint's model on its run's evaluation data.

use anyhow::Result;

use super::train::write_metrics;
use super::{CheckpointOptions, PredictOptions};
use crate::engine::trainer::Trainer;

/// `host eval --checkpoint DIR`.
pub fn evaluate(options: &CheckpointOptions) -> Result<()> {
    let mut trainer = Trainer::from_checkpoint(&options.checkpoint)?;
    let (metrics, _) = trainer.evaluate()?;
    write_metrics(&mut std::io::stdout().lock(), "eval metrics", &metrics)
}

/// `host predict --checkpoint DIR --output FILE`.
pub fn predict(options: &PredictOptions) -> Result<()> {
    let mut trainer = Trainer::from_checkpoint(&options.checkpoint.checkpoint)?;
    let metrics = trainer.predict(&options.output)?;
    write_metrics(&mut std::io::stdout().lock(), "test metrics", &metrics)?;
    println!("predictions: {}", options.output.display());
    Ok(())
}
