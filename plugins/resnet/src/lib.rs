//! `resnet`: a small ResNet for images (He et al. 2015), as torchvision builds one from
//! its `BasicBlock`s: a 3x3 stem, one stage of basic blocks per width (each stage after
//! the first halves the image with stride 2 and a 1x1 downsample), global average
//! pooling and a linear classifier. Weight names follow torchvision (`conv1.weight`,
//! `layer2.0.downsample.1.running_mean`, `fc.bias`), so a saved model loads into the
//! PyTorch module with `load_state_dict`.
//!
//! Select it with `--model plugin:resnet`. It reads the batch field `input`: images
//! [channels, height, width] or [height, width] per example, or flat square images (the
//! digits' 64 features are 8x8).
//!
//! Config (all optional): `widths` (channels per stage, default [16, 32]),
//! `blocks_per_stage` (1), `image_shape` ([channels, height, width] of flat inputs).

use plugin_api::prelude::*;

const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Channels of each stage; each stage after the first halves the image.
    widths: Vec<i64>,
    /// Basic blocks per stage.
    blocks_per_stage: i64,
    /// [channels, height, width] of inputs stored flat; default: square one-channel
    /// images.
    image_shape: Option<[i64; 3]>,
}

impl Default for Config {
    fn default() -> Self {
        Self { widths: vec![16, 32], blocks_per_stage: 1, image_shape: None }
    }
}

struct ResNet {
    config: Config,
    /// [channels, height, width], known after init.
    image: [i64; 3],
}

impl ResNet {
    fn new(config: Config) -> Result<Self, PluginError> {
        if config.widths.is_empty() || config.widths.iter().any(|&w| w < 1) {
            return Err(PluginError::config(format!(
                "widths must be positive channel counts (got {:?})",
                config.widths
            )));
        }
        if config.blocks_per_stage < 1 {
            return Err(PluginError::config("blocks_per_stage must be at least 1"));
        }
        Ok(Self { config, image: [0; 3] })
    }

    /// The image shape of one example's `input`.
    fn image_shape(&self, input: &[i64]) -> Result<[i64; 3], PluginError> {
        let features: i64 = input.iter().product();
        match (self.config.image_shape, input) {
            (Some([c, h, w]), _) if c * h * w == features => Ok([c, h, w]),
            (Some(shape), _) => {
                Err(PluginError::config(format!("image_shape {shape:?} does not hold the input's {input:?} values")))
            }
            (None, [c, h, w]) => Ok([*c, *h, *w]),
            (None, [h, w]) => Ok([1, *h, *w]),
            (None, [n]) => {
                let side = (*n as f64).sqrt().round() as i64;
                match side * side == *n {
                    true => Ok([1, side, side]),
                    false => Err(PluginError::config(format!(
                        "the input has {n} features, not a square image: set image_shape [channels, height, width]"
                    ))),
                }
            }
            (None, other) => Err(PluginError::config(format!("the input {other:?} is not an image"))),
        }
    }

    /// The blocks as (name, in channels, out channels, stride).
    fn blocks(&self) -> Vec<(String, i64, i64, i64)> {
        let mut blocks = Vec::new();
        let mut channels = self.config.widths[0];
        for (stage, &width) in self.config.widths.iter().enumerate() {
            for index in 0..self.config.blocks_per_stage {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                blocks.push((format!("layer{}.{index}", stage + 1), channels, width, stride));
                channels = width;
            }
        }
        blocks
    }
}

/// torchvision's init: convolutions Kaiming-normal (fan out, ReLU), batch norms 1 and 0.
fn conv(weights: &mut ModelWeights, name: &str, out: i64, inp: i64, kernel: i64) {
    let std = (2.0 / (out * kernel * kernel) as f64).sqrt();
    weights.parameters.insert(
        format!("{name}.weight"),
        Tensor::randn([out, inp, kernel, kernel], (Kind::Float, plugin_api::tch::Device::Cpu)) * std,
    );
}

fn batch_norm(weights: &mut ModelWeights, name: &str, channels: i64) {
    let cpu = (Kind::Float, plugin_api::tch::Device::Cpu);
    weights.parameters.insert(format!("{name}.weight"), Tensor::ones([channels], cpu));
    weights.parameters.insert(format!("{name}.bias"), Tensor::zeros([channels], cpu));
    weights.buffers.insert(format!("{name}.running_mean"), Tensor::zeros([channels], cpu));
    weights.buffers.insert(format!("{name}.running_var"), Tensor::ones([channels], cpu));
}

/// The forward pass's view of the weights.
struct Weights<'a>(&'a Tensors, bool);

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<&Tensor, PluginError> {
        self.0.require(name)
    }

    fn conv(&self, x: &Tensor, name: &str, stride: i64, padding: i64) -> Result<Tensor, PluginError> {
        let w = self.get(&format!("{name}.weight"))?;
        Ok(x.conv2d(w, None::<Tensor>, [stride, stride], [padding, padding], [1, 1], 1))
    }

    fn batch_norm(&self, x: &Tensor, name: &str) -> Result<Tensor, PluginError> {
        let part = |p: &str| self.get(&format!("{name}.{p}"));
        Ok(x.batch_norm(
            Some(part("weight")?),
            Some(part("bias")?),
            Some(part("running_mean")?),
            Some(part("running_var")?),
            self.1,
            BN_MOMENTUM,
            BN_EPS,
            true,
        ))
    }
}

impl Model for ResNet {
    fn init(&mut self, inputs: &ModelInputs) -> Result<ModelWeights, PluginError> {
        self.image = self.image_shape(inputs.shape("input")?)?;
        let classes =
            inputs.num_labels.ok_or_else(|| PluginError::config("resnet classifies: the labels must be class ids"))?;
        let mut weights = ModelWeights::default();
        let first = self.config.widths[0];
        conv(&mut weights, "conv1", first, self.image[0], 3);
        batch_norm(&mut weights, "bn1", first);
        for (name, inp, out, stride) in self.blocks() {
            conv(&mut weights, &format!("{name}.conv1"), out, inp, 3);
            batch_norm(&mut weights, &format!("{name}.bn1"), out);
            conv(&mut weights, &format!("{name}.conv2"), out, out, 3);
            batch_norm(&mut weights, &format!("{name}.bn2"), out);
            if stride != 1 || inp != out {
                conv(&mut weights, &format!("{name}.downsample.0"), out, inp, 1);
                batch_norm(&mut weights, &format!("{name}.downsample.1"), out);
            }
        }
        // nn.Linear's init: uniform in +-1/sqrt(fan_in).
        let last = *self.config.widths.last().unwrap_or(&first);
        let bound = 1.0 / (last as f64).sqrt();
        let cpu = (Kind::Float, plugin_api::tch::Device::Cpu);
        weights.parameters.insert("fc.weight", Tensor::empty([classes, last], cpu).uniform_(-bound, bound));
        weights.parameters.insert("fc.bias", Tensor::empty([classes], cpu).uniform_(-bound, bound));
        Ok(weights)
    }

    fn forward(&mut self, weights: &Tensors, batch: &Tensors, train: bool) -> Result<Tensors, PluginError> {
        let input = batch.require("input")?;
        let [c, h, w] = self.image;
        let mut x = input.to_kind(weights.require("conv1.weight")?.kind()).reshape([-1, c, h, w]);
        let weights = Weights(weights, train);
        x = weights.batch_norm(&weights.conv(&x, "conv1", 1, 1)?, "bn1")?.relu();
        for (name, inp, out, stride) in self.blocks() {
            let y =
                weights.batch_norm(&weights.conv(&x, &format!("{name}.conv1"), stride, 1)?, &format!("{name}.bn1"))?;
            let y = weights.conv(&y.relu(), &format!("{name}.conv2"), 1, 1)?;
            let y = weights.batch_norm(&y, &format!("{name}.bn2"))?;
            let identity = if stride != 1 || inp != out {
                let down = weights.conv(&x, &format!("{name}.downsample.0"), stride, 0)?;
                weights.batch_norm(&down, &format!("{name}.downsample.1"))?
            } else {
                x.shallow_clone()
            };
            x = (y + identity).relu();
        }
        let pooled = x.mean_dim(&[2i64, 3][..], false, x.kind());
        let logits = pooled.linear(weights.get("fc.weight")?, Some(weights.get("fc.bias")?));
        let mut outputs = Tensors::new();
        outputs.insert("logits", logits);
        Ok(outputs)
    }
}

export_plugin! {
    models: { "resnet" => ResNet::new },
}
