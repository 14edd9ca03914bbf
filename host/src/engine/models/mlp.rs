//! A multi-layer perceptron classifier (the default job's model).

use anyhow::Result;
use tch::nn::{self, Module};
use tch::Tensor;

use super::{Model, Outputs};
use crate::engine::data::Batch;

/// Layer widths of the default job's MLP: 64 inputs, two hidden layers of 256, 10 classes.
pub const DIGITS_MLP: &[i64] = &[64, 256, 256, 10];

/// Linear layers with ReLU (and dropout) between them. Parameters are named
/// `layers.{i}.weight` and `layers.{i}.bias`, as a PyTorch `nn.Sequential` of Linear and
/// ReLU under `layers` would name them.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
    dropout: f64,
}

/// The parameters of an MLP: `features` inputs, `layers` hidden layers of `hidden`, then
/// `outputs` (weights and biases; saturating, for sizes no machine holds).
pub fn parameter_count(features: i64, hidden: i64, layers: i64, outputs: i64) -> u64 {
    let linear =
        |inputs: i64, outputs: i64| (inputs as u64).saturating_mul(outputs as u64).saturating_add(outputs as u64);
    match layers {
        0 => linear(features, outputs),
        _ => linear(features, hidden)
            .saturating_add(linear(hidden, hidden).saturating_mul(layers as u64 - 1))
            .saturating_add(linear(hidden, outputs)),
    }
}

impl Mlp {
    pub fn new(root: &nn::Path, widths: &[i64], dropout: f64) -> Self {
        let path = root / "layers";
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(&path / (2 * i), w[0], w[1], Default::default()))
            .collect();
        Self { layers, dropout }
    }

    /// The logits for features `input` [N, F] (further dimensions are flattened).
    pub fn logits(&self, input: &Tensor, train: bool) -> Tensor {
        let last = self.layers.len() - 1;
        let x = if input.dim() > 2 { input.flatten(1, -1) } else { input.shallow_clone() };
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            let y = layer.forward(&x);
            if i < last {
                y.relu().dropout(self.dropout, train)
            } else {
                y
            }
        })
    }
}

impl Model for Mlp {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        Ok(Outputs::logits(self.logits(super::features(batch, "mlp")?, train)))
    }
}
