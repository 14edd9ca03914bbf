//! `mixup`: MixUp and CutMix for classifiers, equal to torchvision's
//! `transforms.v2.MixUp` and `transforms.v2.CutMix` on the same random numbers.
//!
//! Each training batch draws lam from Beta(alpha, alpha) and pairs every example with the
//! one before it (the batch is already shuffled): MixUp blends the inputs, CutMix pastes a
//! box of the paired image whose area follows lam. The labels become class probabilities
//! mixed by the same share (a float tensor [batch, classes]), which the host's cross
//! entropy and the stock `weighted_ce` take as soft targets. Evaluation batches are left
//! as they are.
//!
//! Random numbers come from libtorch's generator, which the host seeds and checkpoints,
//! so runs repeat and resume exactly.
//!
//! Config (all optional): `mode` ("mixup" or "cutmix"), `alpha` (1.0), `num_classes`
//! (default: the model's classes), `image_shape` ([height, width], for CutMix on inputs
//! stored flat, e.g. [8, 8] for the digits' 64 features), `fields` (the batch fields to
//! mix, default ["input"]).

use plugin_api::prelude::*;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// mixup or cutmix.
    mode: String,
    /// The Beta distribution's parameter.
    alpha: f64,
    /// Classes to one-hot the labels to; default: the model's.
    num_classes: Option<i64>,
    /// [height, width] of inputs stored flat, for cutmix.
    image_shape: Option<[i64; 2]>,
    /// The batch fields to mix.
    fields: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self { mode: "mixup".into(), alpha: 1.0, num_classes: None, image_shape: None, fields: vec!["input".into()] }
    }
}

struct Mixup {
    config: Config,
}

impl Mixup {
    fn new(config: Config) -> Result<Self, PluginError> {
        if !["mixup", "cutmix"].contains(&config.mode.as_str()) {
            return Err(PluginError::config(format!("mode must be mixup or cutmix (got {})", config.mode)));
        }
        if !(config.alpha > 0.0 && config.alpha.is_finite()) {
            return Err(PluginError::config(format!("alpha must be a positive number (got {})", config.alpha)));
        }
        Ok(Self { config })
    }

    /// lam ~ Beta(alpha, alpha), drawn as torch.distributions.Beta draws it.
    fn draw_lam(&self) -> f64 {
        let alpha = self.config.alpha as f32;
        Tensor::from_slice(&[alpha, alpha]).reshape([1, 2]).internal_sample_dirichlet().double_value(&[0, 0])
    }

    /// CutMix's box (x1, y1, x2, y2) in an image of `height` x `width`, as torchvision
    /// draws it, and the share of the image left outside it.
    fn draw_box(lam: f64, height: i64, width: i64) -> ((i64, i64, i64, i64), f64) {
        let r_x = Tensor::randint(width, [1], (Kind::Int64, plugin_api::tch::Device::Cpu)).int64_value(&[0]);
        let r_y = Tensor::randint(height, [1], (Kind::Int64, plugin_api::tch::Device::Cpu)).int64_value(&[0]);
        let r = 0.5 * (1.0 - lam).sqrt();
        let (r_w_half, r_h_half) = ((r * width as f64) as i64, (r * height as f64) as i64);
        let (x1, y1) = ((r_x - r_w_half).max(0), (r_y - r_h_half).max(0));
        let (x2, y2) = ((r_x + r_w_half).min(width), (r_y + r_h_half).min(height));
        let kept = 1.0 - ((x2 - x1) * (y2 - y1)) as f64 / (width * height) as f64;
        ((x1, y1, x2, y2), kept)
    }

    fn cutmix(&self, input: &Tensor, corner: (i64, i64, i64, i64)) -> Result<Tensor, PluginError> {
        let shape = input.size();
        let images = match self.config.image_shape {
            Some([h, w]) => {
                if shape[1..].iter().product::<i64>() % (h * w) != 0 {
                    return Err(PluginError::config(format!(
                        "image_shape {h}x{w} does not divide the input's {:?} features",
                        &shape[1..]
                    )));
                }
                input.reshape([shape[0], -1, h, w])
            }
            None => input.shallow_clone(),
        };
        let (x1, y1, x2, y2) = corner;
        let rolled = images.roll([1], [0]);
        let output = images.copy();
        let (h_axis, w_axis) = (images.dim() as i64 - 2, images.dim() as i64 - 1);
        let patch = rolled.narrow(h_axis, y1, y2 - y1).narrow(w_axis, x1, x2 - x1);
        output.narrow(h_axis, y1, y2 - y1).narrow(w_axis, x1, x2 - x1).copy_(&patch);
        Ok(output.reshape(shape.as_slice()))
    }

    /// The image height and width CutMix works in.
    fn image_size(&self, input: &Tensor) -> Result<(i64, i64), PluginError> {
        match (self.config.image_shape, input.size().as_slice()) {
            (Some([h, w]), _) => Ok((h, w)),
            (None, [_, .., h, w]) if input.dim() >= 3 => Ok((*h, *w)),
            (None, shape) => Err(PluginError::config(format!(
                "cutmix needs images ([batch, ..., height, width]); the input is {shape:?}: set image_shape for inputs stored flat"
            ))),
        }
    }
}

impl BatchTransform for Mixup {
    fn transform(&mut self, batch: &Tensors, context: &BatchContext) -> Result<Tensors, PluginError> {
        let labels = batch.require("labels")?;
        let first = batch.require(self.config.fields.first().map(String::as_str).unwrap_or("input"))?;
        // As torchvision: lam first, then (CutMix) the box.
        let lam = self.draw_lam();
        let (corner, lam) = match self.config.mode.as_str() {
            "cutmix" => {
                let (height, width) = self.image_size(first)?;
                Self::draw_box(lam, height, width)
            }
            _ => ((0, 0, 0, 0), lam),
        };
        let soft = match labels.dim() {
            1 => {
                let classes = self.config.num_classes.or(context.num_labels).ok_or_else(|| {
                    PluginError::config("the model's classes are not known: set num_classes in the mixup config")
                })?;
                labels.one_hot(classes).to_kind(Kind::Float)
            }
            2 if labels.is_floating_point() => labels.shallow_clone(),
            _ => {
                return Err(PluginError::new(format!(
                    "labels must be class ids [batch] or class probabilities [batch, classes] (got {:?})",
                    labels.size()
                )))
            }
        };
        let mut out = Tensors::new();
        for (name, tensor) in batch.iter() {
            let changed = if name == "labels" {
                soft.roll([1], [0]) * (1.0 - lam) + &soft * lam
            } else if self.config.fields.iter().any(|f| f == name) {
                match self.config.mode.as_str() {
                    "cutmix" => self.cutmix(tensor, corner)?,
                    _ => tensor.roll([1], [0]) * (1.0 - lam) + tensor * lam,
                }
            } else {
                tensor.shallow_clone()
            };
            out.insert(name, changed);
        }
        Ok(out)
    }
}

export_plugin! {
    batch_transforms: { "mixup" => Mixup::new },
}
