//! The default job's model: a multi-layer perceptron classifier.

use tch::nn::{self, Module};
use tch::Tensor;

/// Layer widths of the default job's MLP: 64 inputs, two hidden layers of 256, 10 classes.
pub const DIGITS_MLP: &[i64] = &[64, 256, 256, 10];

/// Linear layers with ReLU between them. Parameters are named `layers.{i}.weight` and
/// `layers.{i}.bias`, as a PyTorch `nn.Sequential` under `layers` would name them.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    pub fn new(root: &nn::Path, widths: &[i64]) -> Self {
        let path = root / "layers";
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(&path / (2 * i), w[0], w[1], Default::default()))
            .collect();
        Self { layers }
    }
}

impl Module for Mlp {
    fn forward(&self, input: &Tensor) -> Tensor {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(input.shallow_clone(), |x, (i, layer)| {
            let y = layer.forward(&x);
            if i < last {
                y.relu()
            } else {
                y
            }
        })
    }
}
