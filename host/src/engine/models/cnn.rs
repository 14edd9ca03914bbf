//! A small convolutional image classifier.

use anyhow::Result;
use tch::nn::{self, Module};
use tch::Tensor;

use super::{Model, Outputs};
use crate::engine::data::Batch;
use crate::error::InputError;

/// `num_blocks` blocks of 3x3 convolution (32, 64, 128, ... channels), ReLU and 2x2 max
/// pooling, then a hidden linear layer and the classifier. Names follow a PyTorch module
/// with `features` and `classifier` `nn.Sequential`s: `features.{3i}` are the convolutions,
/// `classifier.0` and `classifier.3` the linear layers.
#[derive(Debug)]
pub struct Cnn {
    convs: Vec<nn::Conv2D>,
    hidden: nn::Linear,
    out: nn::Linear,
    /// Channels, height and width of one image; `input` rows of C*H*W values are viewed so.
    image: [i64; 3],
    dropout: f64,
}

/// The shapes through the convolution blocks, from the data's `input` shape.
pub struct Geometry {
    /// Channels, height and width of one image.
    image: [i64; 3],
    /// Input and output channels of each block.
    blocks: Vec<(i64, i64)>,
    /// Values per example after the blocks.
    flat: i64,
}

impl Geometry {
    /// `input_shape` is the data's `input` shape: [N, C, H, W], [N, H, W], or [N, F] with F a
    /// square (one channel, as the digits' 64 pixels are 8x8).
    pub fn of(input_shape: &[i64], num_blocks: i64) -> Result<Self, InputError> {
        let image = match input_shape {
            [_, c, h, w] => [*c, *h, *w],
            [_, h, w] => [1, *h, *w],
            [_, f] if ((*f as f64).sqrt().round() as i64).pow(2) == *f => {
                let side = (*f as f64).sqrt().round() as i64;
                [1, side, side]
            }
            other => {
                return Err(InputError::new(format!(
                    "the cnn model needs images: 'input' of shape [N, C, H, W], [N, H, W] or [N, side*side]; the data's is {other:?}"
                )))
            }
        };
        let (mut channels, mut side) = (image[0], [image[1], image[2]]);
        let mut blocks = Vec::new();
        for i in 0..num_blocks {
            if side[0] < 2 || side[1] < 2 || i >= 24 {
                return Err(InputError::new(format!(
                    "num_hidden_layers = {num_blocks} conv blocks halve the {}x{} image to nothing; use at most {i}",
                    image[1], image[2]
                )));
            }
            let out = 32 << i;
            blocks.push((channels, out));
            channels = out;
            side = [side[0] / 2, side[1] / 2];
        }
        Ok(Self { image, blocks, flat: channels * side[0] * side[1] })
    }

    /// The parameters of a CNN of this geometry: 3x3 convolutions, the hidden and the
    /// output linear layers, with biases.
    pub fn parameter_count(&self, hidden: i64, num_labels: i64) -> u64 {
        let product = |a: i64, b: i64| (a as u64).saturating_mul(b as u64);
        let convs: u64 =
            self.blocks.iter().map(|&(i, o)| product(i, o).saturating_mul(9).saturating_add(o as u64)).sum();
        convs
            .saturating_add(product(self.flat, hidden))
            .saturating_add(hidden as u64)
            .saturating_add(product(hidden, num_labels))
            .saturating_add(num_labels as u64)
    }
}

impl Cnn {
    pub fn new(
        root: &nn::Path,
        input_shape: &[i64],
        num_blocks: i64,
        hidden: i64,
        num_labels: i64,
        dropout: f64,
    ) -> Result<Self, InputError> {
        let geometry = Geometry::of(input_shape, num_blocks)?;
        let features = root / "features";
        let config = nn::ConvConfig { padding: 1, ..Default::default() };
        let convs = geometry
            .blocks
            .iter()
            .enumerate()
            .map(|(i, (c_in, c_out))| nn::conv2d(&features / (3 * i), *c_in, *c_out, 3, config))
            .collect();
        let classifier = root / "classifier";
        Ok(Self {
            convs,
            hidden: nn::linear(&classifier / 0, geometry.flat, hidden, Default::default()),
            out: nn::linear(&classifier / 3, hidden, num_labels, Default::default()),
            image: geometry.image,
            dropout,
        })
    }
}

impl Model for Cnn {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        let input = super::features(batch, "cnn")?;
        let [c, h, w] = self.image;
        let mut x: Tensor = input.reshape([-1, c, h, w]);
        for conv in &self.convs {
            x = conv.forward(&x).relu().max_pool2d_default(2);
        }
        let x = self.hidden.forward(&x.flatten(1, -1)).relu().dropout(self.dropout, train);
        Ok(Outputs::logits(self.out.forward(&x)))
    }
}
