//! The default job's data: the digits set embedded in the binary.

use std::io::Read;

use anyhow::{Context, Result};
use tch::Tensor;

use super::Dataset;

/// UCI optical-recognition digits (CC BY 4.0); see data/README.md.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../data/digits.csv.gz");

/// The digits set: 1797 8x8 images scaled to [0, 1] as `input` [N, 64] (row-major
/// pixels), `labels` 0..9.
pub fn load_digits() -> Result<Dataset> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .context("the embedded digits data is corrupt")?;
    let mut features = Vec::with_capacity(1797 * 64);
    let mut labels = Vec::with_capacity(1797);
    for (row, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("digits row {row}: not a number"))?;
        anyhow::ensure!(values.len() == 65, "digits row {row}: {} values, expected 65", values.len());
        features.extend(values[..64].iter().map(|v| v / 16.0));
        labels.push(values[64] as i64);
    }
    let n = labels.len() as i64;
    let fields = vec![
        ("input".to_owned(), Tensor::from_slice(&features).view([n, 64])),
        ("labels".to_owned(), Tensor::from_slice(&labels)),
    ];
    Ok(Dataset::new("digits", fields)?)
}
