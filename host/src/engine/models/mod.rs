//! The models the host trains: built-in architectures chosen by name, a pretrained
//! Hugging Face model folder, or a TorchScript module from PyTorch. A model reads the
//! batch fields it needs and returns named outputs, `logits` first; a loss plugin receives
//! all of them.

mod cnn;
mod mlp;
mod plugin;
pub mod pretrained;
mod torchscript;
mod transformer;

use std::path::PathBuf;

use anyhow::Result;
use tch::{nn, Kind, Tensor};

use crate::engine::data::{Batch, Dataset};
use crate::error::InputError;
use crate::plugins::PluginModel;

pub use mlp::{Mlp, DIGITS_MLP};

/// What the model's logits predict, which decides the loss and the evaluation metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One class per example (or per label item): cross entropy; accuracy and macro F1.
    Classification,
    /// The next token at each position (labels already aligned with the positions):
    /// cross entropy; perplexity and token accuracy.
    CausalLm,
}

/// A model's outputs by name, with `logits`; or, from [`Model::forward_hidden`], a
/// language model's last hidden states and head in place of the logits.
pub struct Outputs {
    pub fields: Vec<(String, Tensor)>,
    pub head_input: Option<HeadInput>,
}

/// What a language model's head turns into logits: hidden states [.., width] and the head
/// (logits = hidden weight^T + bias, then `cap * tanh(logits / cap)` with a soft cap).
pub struct HeadInput {
    pub hidden: Tensor,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// Gemma 2's final_logit_softcapping.
    pub soft_cap: Option<f64>,
}

impl Outputs {
    pub fn logits(logits: Tensor) -> Self {
        Self { fields: vec![("logits".to_owned(), logits)], head_input: None }
    }

    pub fn hidden(head_input: HeadInput) -> Self {
        Self { fields: Vec::new(), head_input: Some(head_input) }
    }

    pub fn get_logits(&self) -> &Tensor {
        &self.fields.iter().find(|(n, _)| n == "logits").expect("models return logits").1
    }

    /// The outputs by name, as a plugin loss sees them: the fields, and a head input as
    /// `hidden_states`, `lm_head.weight`, `lm_head.bias` and `logit_soft_cap`.
    pub fn to_plugin(&self) -> plugin_api::Tensors {
        let mut tensors = plugin_api::Tensors::new();
        for (name, tensor) in &self.fields {
            tensors.insert(name, tensor.shallow_clone());
        }
        if let Some(head) = &self.head_input {
            tensors.insert("hidden_states", head.hidden.shallow_clone());
            tensors.insert("lm_head.weight", head.weight.shallow_clone());
            if let Some(bias) = &head.bias {
                tensors.insert("lm_head.bias", bias.shallow_clone());
            }
            if let Some(cap) = head.soft_cap {
                tensors.insert("logit_soft_cap", Tensor::from(cap));
            }
        }
        tensors
    }
}

/// How a completion picks each next token and when it ends (`Model::decode`).
pub struct Decoding<'a> {
    /// At most this many new tokens.
    pub max_new_tokens: i64,
    /// The next token from the last position's logits [vocab].
    pub choose: &'a mut dyn FnMut(&Tensor) -> i64,
    /// Whether the new tokens so far end the completion (an end token, a stop string).
    pub ends: &'a mut dyn FnMut(&[i64]) -> bool,
}

pub trait Model {
    /// The forward pass over a batch; `train` enables dropout (and training-mode layers).
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs>;

    /// A causal language model's forward pass up to its head: the last hidden states and
    /// the head, for a loss that needs no logits (the same value and gradients, far less
    /// memory); `None` where the model cannot give them.
    fn forward_hidden(&self, _batch: &Batch, _train: bool) -> Option<Result<Outputs>> {
        None
    }

    /// Turns on NEFTune noise on the input token embeddings (neftune_noise_alpha); false
    /// for models without token embeddings.
    fn enable_neftune(&mut self, _alpha: f64) -> bool {
        false
    }

    /// For models that count floating-point operations as transformers' `PreTrainedModel`
    /// does (HF's `floating_point_ops`: 6 x input tokens x the parameters outside
    /// embeddings), the name endings of their embedding weights. `None`: no count, as HF
    /// counts none for a plain module.
    fn embedding_weights(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Greedy completion of a prompt of token ids [T], for causal language models (others:
    /// `None`): the prompt followed by up to `new_tokens` tokens, ending at `stop`.
    fn generate(&self, _prompt: &Tensor, _new_tokens: i64, _stop: Option<i64>) -> Option<Result<Tensor>> {
        None
    }

    /// Completion of a prompt of token ids [T], for causal language models (others:
    /// `None`), each next token picked and the end decided by `decoding`: the new tokens.
    fn decode(&self, _prompt: &Tensor, _decoding: &mut Decoding) -> Option<Result<Vec<i64>>> {
        None
    }

    /// Whether it keeps packed examples apart (reads `position_ids`): data packed for a
    /// model that does not is refused, as its examples would attend to each other.
    fn reads_packed_positions(&self) -> bool {
        false
    }

    /// Whether weight decay applies to parameter `name` (Hugging Face's rule: not to
    /// biases and normalization weights).
    fn decays(&self, name: &str) -> bool {
        crate::engine::optim::decays(name)
    }
}

/// NEFTune (Jain et al. 2023, transformers' `neftune_post_forward_hook`): in training,
/// uniform noise in [-m, m] on the input embeddings [B, T, D], m = alpha / sqrt(T * D).
pub(crate) fn neftune_noise(embedded: Tensor, alpha: Option<f64>, train: bool) -> Tensor {
    match alpha {
        Some(alpha) if train => {
            let size = embedded.size();
            let magnitude = alpha / ((size[size.len() - 2] * size[size.len() - 1]) as f64).sqrt();
            let noise = embedded.zeros_like().uniform_(-magnitude, magnitude);
            embedded + noise
        }
        _ => embedded,
    }
}

/// The model the arguments ask for, checked: an architecture and its sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub sizes: Sizes,
}

/// Which model.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    Mlp,
    Cnn,
    Transformer,
    Gpt,
    /// A TorchScript module saved by PyTorch.
    TorchScript(PathBuf),
    /// A plugin's model component (`plugin:NAME`).
    Plugin(String),
    /// A Hugging Face model folder (model_name_or_path), its parameters in `dtype`
    /// (None: the dtype config.json names).
    Pretrained {
        dir: PathBuf,
        dtype: Option<Kind>,
        training: pretrained::Training,
    },
}

/// The sizes of a built-in model (a TorchScript module has its own).
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    /// Width of the hidden layers (mlp, cnn) or of the model (transformer, gpt).
    pub hidden_size: i64,
    /// Hidden layers (mlp), convolution blocks (cnn) or transformer blocks.
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    /// The context length of a transformer.
    pub max_seq_length: i64,
    pub dropout: f64,
    /// Classes; default: the largest label + 1.
    pub num_labels: Option<i64>,
    /// Vocabulary; default: the tokenizer's, else the largest token id + 1.
    pub vocab_size: Option<i64>,
}

impl ModelSpec {
    /// The model named `name` (mlp, cnn, transformer, gpt, torchscript:FILE) with `sizes`,
    /// refusing sizes it cannot be built with.
    pub fn parse(name: &str, sizes: Sizes) -> Result<Self, InputError> {
        let architecture = match name {
            "mlp" => Architecture::Mlp,
            "cnn" => Architecture::Cnn,
            "transformer" => Architecture::Transformer,
            "gpt" => Architecture::Gpt,
            "pretrained" => {
                return Err(InputError::new(
                    "model 'pretrained' needs model_name_or_path: a Hugging Face model folder (config.json, model.safetensors, tokenizer.json)",
                ))
            }
            other => match (other.strip_prefix("torchscript:"), other.strip_prefix("plugin:")) {
                (Some(file), _) => Architecture::TorchScript(PathBuf::from(file)),
                (_, Some("")) => {
                    return Err(InputError::new("model plugin: needs the model component's name (plugin:NAME)"))
                }
                (_, Some(component)) => Architecture::Plugin(component.to_owned()),
                _ => {
                    return Err(InputError::new(format!(
                        "model '{other}' is not known; use mlp, cnn, transformer, gpt, torchscript:FILE.pt or plugin:NAME"
                    )))
                }
            },
        };
        let positive = |what: &str, value: i64| {
            if value > 0 {
                Ok(())
            } else {
                Err(InputError::new(format!("{what} must be > 0 for the {name} model (got {value})")))
            }
        };
        if !matches!(
            architecture,
            Architecture::TorchScript(_) | Architecture::Pretrained { .. } | Architecture::Plugin(_)
        ) {
            positive("hidden_size", sizes.hidden_size)?;
            positive("num_hidden_layers", sizes.num_hidden_layers)?;
        }
        if matches!(architecture, Architecture::Transformer | Architecture::Gpt) {
            let (heads, hidden) = (sizes.num_attention_heads, sizes.hidden_size);
            positive("num_attention_heads", heads)?;
            if hidden % heads != 0 {
                return Err(InputError::new(format!(
                    "num_attention_heads ({heads}) must divide hidden_size ({hidden})"
                )));
            }
            positive("max_seq_length", sizes.max_seq_length)?;
        }
        if architecture == Architecture::Gpt && sizes.max_seq_length < 2 {
            return Err(InputError::new(format!(
                "max_seq_length must be at least 2 for the gpt model, which predicts each next token (got {})",
                sizes.max_seq_length
            )));
        }
        Ok(Self { architecture, sizes })
    }

    /// The pretrained model in folder `dir` (model_name_or_path, opened by the caller); its
    /// parameters in `dtype` (None: config.json's).
    pub fn pretrained(dir: &str, dtype: Option<Kind>, training: pretrained::Training, sizes: Sizes) -> Self {
        Self { architecture: Architecture::Pretrained { dir: PathBuf::from(dir), dtype, training }, sizes }
    }

    /// The name the arguments give it.
    pub fn name(&self) -> String {
        match &self.architecture {
            Architecture::Mlp => "mlp".to_owned(),
            Architecture::Cnn => "cnn".to_owned(),
            Architecture::Transformer => "transformer".to_owned(),
            Architecture::Gpt => "gpt".to_owned(),
            Architecture::TorchScript(file) => format!("torchscript:{}", file.display()),
            Architecture::Plugin(component) => format!("plugin:{component}"),
            Architecture::Pretrained { dir, .. } => dir.display().to_string(),
        }
    }
}

/// The most classes a label column may make, and the largest vocabulary: beyond them a
/// label or token id is a mistake in the data (a count or an identifier in the wrong
/// column), not a size to allocate.
pub const MAX_CLASSES: i64 = 1 << 20;
pub const MAX_VOCAB: i64 = 1 << 22;

/// A model ready to build: the spec with the sizes the data decides (input shape, classes,
/// vocabulary), checked against the data.
pub struct ModelPlan {
    spec: ModelSpec,
    shape: PlanShape,
}

enum PlanShape {
    Mlp {
        features: i64,
        num_labels: i64,
    },
    Cnn {
        input_shape: Vec<i64>,
        num_labels: i64,
    },
    Gpt(transformer::Config),
    Transformer(transformer::Config, i64),
    TorchScript,
    Pretrained(Box<pretrained::Plan>),
    /// A plugin's model over examples of these field shapes, with these classes.
    Plugin {
        fields: Vec<(String, Vec<i64>)>,
        num_labels: Option<i64>,
    },
}

impl ModelPlan {
    /// The classes of a classifier the host sizes from the data (built-in models);
    /// `None` for other models.
    pub fn num_labels(&self) -> Option<i64> {
        match &self.shape {
            PlanShape::Mlp { num_labels, .. } | PlanShape::Cnn { num_labels, .. } => Some(*num_labels),
            PlanShape::Plugin { num_labels, .. } => *num_labels,
            PlanShape::Transformer(_, num_labels) => Some(*num_labels),
            _ => None,
        }
    }
}

/// The sizes the data leaves to decide, checked against the data.
pub fn plan(spec: &ModelSpec, train: &Dataset, eval: &Dataset) -> Result<ModelPlan, InputError> {
    let sizes = &spec.sizes;
    let name = spec.name();
    let transformer = || {
        Ok::<_, InputError>(transformer::Config {
            vocab: vocab_size(&name, sizes, train, eval)?,
            width: sizes.hidden_size,
            layers: sizes.num_hidden_layers,
            heads: sizes.num_attention_heads,
            context: sizes.max_seq_length,
            dropout: sizes.dropout,
        })
    };
    let shape = match &spec.architecture {
        Architecture::TorchScript(_) => PlanShape::TorchScript,
        Architecture::Plugin(_) => {
            let names = train.names();
            let fields = names.iter().filter_map(|n| Some((n.to_string(), train.field(n)?.size()[1..].to_vec())));
            let num_labels = match train.labels().is_floating_point() {
                true => None,
                false => Some(classes(sizes, train, eval)?),
            };
            PlanShape::Plugin { fields: fields.collect(), num_labels }
        }
        Architecture::Pretrained { dir, dtype, training } => {
            PlanShape::Pretrained(Box::new(pretrained::plan(dir, *dtype, training, sizes, train, eval)?))
        }
        Architecture::Mlp | Architecture::Cnn => {
            let num_labels = classes(sizes, train, eval)?;
            let input = train.field("input").ok_or_else(|| {
                InputError::new(format!(
                    "the {name} model reads the data field 'input', which the data does not have (fields: {}); name the features field 'input' or set feature_columns",
                    train.names().join(", ")
                ))
            })?;
            if input.dim() < 2 {
                return Err(InputError::new(format!(
                    "the {name} model needs 'input' with a row per example and features along the rest ([N, F] or images); the data's is {:?}",
                    input.size()
                )));
            }
            if input.size()[1..].contains(&0) {
                return Err(InputError::new(format!(
                    "the {name} model needs at least one feature per example; the data's 'input' is {:?} (empty lists or no feature columns)",
                    input.size()
                )));
            }
            if spec.architecture == Architecture::Mlp {
                PlanShape::Mlp { features: input.size()[1..].iter().product(), num_labels }
            } else {
                let input_shape = input.size();
                cnn::Geometry::of(&input_shape, sizes.num_hidden_layers)?;
                PlanShape::Cnn { input_shape, num_labels }
            }
        }
        Architecture::Gpt => PlanShape::Gpt(transformer()?),
        Architecture::Transformer => {
            let config = transformer()?;
            PlanShape::Transformer(config, classes(sizes, train, eval)?)
        }
    };
    Ok(ModelPlan { spec: spec.clone(), shape })
}

impl ModelPlan {
    /// How many parameters the model will have (`None` for a TorchScript module, whose
    /// file says).
    pub fn parameter_count(&self) -> Option<u64> {
        let sizes = &self.spec.sizes;
        match &self.shape {
            PlanShape::Mlp { features, num_labels } => {
                Some(mlp::parameter_count(*features, sizes.hidden_size, sizes.num_hidden_layers, *num_labels))
            }
            PlanShape::Cnn { input_shape, num_labels } => {
                let geometry = cnn::Geometry::of(input_shape, sizes.num_hidden_layers).ok()?;
                Some(geometry.parameter_count(sizes.hidden_size, *num_labels))
            }
            PlanShape::Gpt(config) => Some(transformer::gpt_parameter_count(config)),
            PlanShape::Transformer(config, labels) => Some(transformer::classifier_parameter_count(config, *labels)),
            PlanShape::TorchScript | PlanShape::Plugin { .. } => None,
            PlanShape::Pretrained(plan) => Some(plan.parameter_count()),
        }
    }

    /// The activations a training micro-batch of `batch` rows of `sequence` tokens keeps,
    /// in elements of `element_bytes` (transformers; `None` for the other models).
    pub fn activation_bytes(&self, batch: i64, sequence: i64, element_bytes: u64) -> Option<u64> {
        let shape = match &self.shape {
            PlanShape::Pretrained(plan) => return Some(plan.activation_bytes(batch, sequence, element_bytes)),
            PlanShape::Gpt(config) | PlanShape::Transformer(config, _) => {
                crate::engine::activations::TransformerShape {
                    layers: config.layers,
                    width: config.width,
                    heads: config.heads,
                }
            }
            _ => return None,
        };
        let checkpointing = false;
        Some(crate::engine::activations::activation_bytes(shape, batch, sequence, element_bytes, checkpointing))
    }

    /// The dtype the model's parameters are made in, where it is not float32.
    pub fn kind(&self) -> Option<Kind> {
        match &self.shape {
            PlanShape::Pretrained(plan) => Some(plan.kind()),
            _ => None,
        }
    }

    /// What a saved Hugging Face folder has besides the weights (pretrained models only).
    pub fn export(&self) -> Option<pretrained::Export> {
        match &self.shape {
            PlanShape::Pretrained(plan) => Some(plan.export()),
            _ => None,
        }
    }

    /// The adapter folder whose weights the built model starts from.
    pub fn adapter_dir(&self) -> Option<&std::path::Path> {
        match &self.shape {
            PlanShape::Pretrained(plan) => plan.adapter_dir(),
            _ => None,
        }
    }

    /// Builds the model, its parameters under `root`; a plugin's model (model plugin:NAME)
    /// from its component.
    pub fn build(&self, root: &nn::Path, plugin: Option<PluginModel>) -> Result<(Box<dyn Model>, Task)> {
        if let (PlanShape::Plugin { fields, num_labels }, Architecture::Plugin(name)) =
            (&self.shape, &self.spec.architecture)
        {
            let model = plugin.ok_or_else(|| anyhow::anyhow!("model plugin:{name} was not created"))?;
            return Ok((Box::new(plugin::PluginNet::build(root, model, fields, *num_labels)?), Task::Classification));
        }
        let sizes = &self.spec.sizes;
        Ok(match (&self.shape, &self.spec.architecture) {
            (PlanShape::TorchScript, Architecture::TorchScript(file)) => {
                (Box::new(torchscript::TorchScript::load(file, root)?), Task::Classification)
            }
            (PlanShape::Mlp { features, num_labels }, _) => {
                let mut widths = vec![*features];
                widths.extend(std::iter::repeat_n(sizes.hidden_size, sizes.num_hidden_layers as usize));
                widths.push(*num_labels);
                (Box::new(Mlp::new(root, &widths, sizes.dropout)), Task::Classification)
            }
            (PlanShape::Cnn { input_shape, num_labels }, _) => {
                let (blocks, hidden) = (sizes.num_hidden_layers, sizes.hidden_size);
                let model = cnn::Cnn::new(root, input_shape, blocks, hidden, *num_labels, sizes.dropout)?;
                (Box::new(model), Task::Classification)
            }
            (PlanShape::Gpt(config), _) => (Box::new(transformer::Gpt::new(root, config)), Task::CausalLm),
            (PlanShape::Transformer(config, labels), _) => {
                (Box::new(transformer::EncoderClassifier::new(root, config, *labels)), Task::Classification)
            }
            (PlanShape::Pretrained(plan), _) => (plan.build(root)?, plan.task()),
            (PlanShape::TorchScript, _) => unreachable!("a TorchScript plan comes from a TorchScript spec"),
            (PlanShape::Plugin { .. }, _) => unreachable!("a plugin plan comes from a plugin spec"),
        })
    }
}

/// The number of classes: `num_labels`, else the largest label + 1; every label must be a
/// class or -100 (ignored).
pub(crate) fn classes(sizes: &Sizes, train: &Dataset, eval: &Dataset) -> Result<i64, InputError> {
    let labels = [train.labels(), eval.labels()];
    if labels.iter().any(|l| l.is_floating_point()) {
        return Err(InputError::new(
            "labels are not whole numbers: the built-in models classify (give class ids 0..N-1), or use a loss plugin with a torchscript model",
        ));
    }
    // An evaluation set may be empty (nothing is evaluated): it has no largest label.
    let largest = labels.iter().filter(|l| l.numel() > 0).map(|l| l.max().int64_value(&[])).max().unwrap_or(0);
    if sizes.num_labels.is_none() && largest >= MAX_CLASSES {
        let (set, l) = if train.labels().max().int64_value(&[]) == largest {
            ("training", train.labels())
        } else {
            ("evaluation", eval.labels())
        };
        let item = l.flatten(0, -1).argmax(None, false).int64_value(&[]);
        return Err(InputError::new(format!(
            "{set} label {largest} (item {item}) would make {} classes; labels are class ids 0..N-1 (at most {MAX_CLASSES} classes): check the label column",
            largest + 1
        )));
    }
    let num_labels = sizes.num_labels.unwrap_or(largest + 1);
    for (set, l) in ["training", "evaluation"].iter().zip(labels) {
        let bad = l.ge(num_labels).logical_or(&l.lt(0).logical_and(&l.ne(-100)));
        if bad.any().int64_value(&[]) != 0 {
            let row = bad.to_kind(Kind::Int64).argmax(None, false).int64_value(&[]);
            let value = l.flatten(0, -1).get(row).int64_value(&[]);
            return Err(InputError::new(format!(
                "{set} label {value} (item {row}) is outside the model's {num_labels} classes (num_labels); labels must be 0..{} or -100",
                num_labels - 1
            )));
        }
    }
    if num_labels < 2 {
        return Err(InputError::new(format!("a classifier needs at least 2 classes (num_labels = {num_labels})")));
    }
    Ok(num_labels)
}

/// The vocabulary: `vocab_size`, else the largest token id + 1.
fn vocab_size(model: &str, sizes: &Sizes, train: &Dataset, eval: &Dataset) -> Result<i64, InputError> {
    let ids: Vec<&Tensor> = [train, eval].iter().filter_map(|d| d.field("input_ids")).collect();
    if ids.len() < 2 {
        return Err(InputError::new(format!(
            "the {} model reads the data field 'input_ids' (token ids), which the data does not have (fields: {}); give JSONL text with tokenizer_file, or a file with input_ids",
            model,
            train.names().join(", ")
        )));
    }
    let largest = ids.iter().filter(|t| t.numel() > 0).map(|t| t.max().int64_value(&[])).max().unwrap_or(0);
    let vocab = sizes.vocab_size.or(train.vocab_size).unwrap_or(largest + 1);
    if vocab > MAX_VOCAB {
        return Err(InputError::new(format!(
            "a vocabulary of {vocab} tokens (token id {largest}) is more than {MAX_VOCAB}: check the input_ids, or vocab_size"
        )));
    }
    if largest >= vocab {
        return Err(InputError::new(format!("token id {largest} is outside vocab_size {vocab}")));
    }
    Ok(vocab)
}

/// The batch's `input` as the float features a model computes with.
pub(crate) fn features<'a>(batch: &'a Batch, model: &str) -> Result<&'a Tensor> {
    Ok(batch.require("input", model)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::data;

    fn sizes() -> Sizes {
        Sizes {
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_seq_length: 8,
            dropout: 0.0,
            num_labels: None,
            vocab_size: None,
        }
    }

    /// Token ids of 6 examples of up to 5 tokens, with labels 0..2.
    fn texts() -> Dataset {
        let ids = Tensor::from_slice(&[1i64, 2, 3, 0, 0, 4, 5, 6, 7, 8, 1, 1, 2, 3, 9]).view([3, 5]).repeat([2, 1]);
        let mask = ids.ne(0).to_kind(Kind::Int64);
        let labels = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]);
        let fields =
            vec![("attention_mask".to_owned(), mask), ("input_ids".to_owned(), ids), ("labels".to_owned(), labels)];
        Dataset::new("texts", fields).unwrap()
    }

    #[test]
    fn neftune_adds_bounded_uniform_noise_in_training_only() {
        let _generator = crate::engine::rng::lock_generator();
        let x = Tensor::zeros([4, 50, 20], (Kind::Float, tch::Device::Cpu));
        let noisy = neftune_noise(x.shallow_clone(), Some(5.0), true);
        let magnitude = 5.0 / 1000f64.sqrt();
        let largest = noisy.abs().max().double_value(&[]);
        assert!(largest <= magnitude && largest > 0.99 * magnitude, "{largest} vs {magnitude}");
        // Uniform in [-m, m]: mean |noise| is m / 2.
        let mean = noisy.abs().mean(Kind::Float).double_value(&[]);
        assert!((mean / magnitude - 0.5).abs() < 0.02, "{mean}");
        assert!(neftune_noise(x.shallow_clone(), Some(5.0), false).equal(&x));
        assert!(neftune_noise(x.shallow_clone(), None, true).equal(&x));
    }

    #[test]
    fn parameter_counts_match_the_built_models() {
        let _generator = crate::engine::rng::lock_generator();
        let (digits_train, digits_eval) = data::split(&data::load_digits().unwrap(), 20.0, None, None);
        let texts = texts();
        let cases = [
            ("mlp", &digits_train, &digits_eval),
            ("cnn", &digits_train, &digits_eval),
            ("transformer", &texts, &texts),
            ("gpt", &texts, &texts),
        ];
        for (name, train, eval) in cases {
            let spec = ModelSpec::parse(name, sizes()).unwrap();
            let plan = plan(&spec, train, eval).unwrap();
            let vars = nn::VarStore::new(tch::Device::Cpu);
            plan.build(&vars.root(), None).unwrap();
            let built: i64 = vars.variables().values().map(|t| t.numel() as i64).sum();
            assert_eq!(plan.parameter_count(), Some(built as u64), "{name}");
        }
    }

    #[test]
    fn labels_and_token_ids_that_no_model_could_hold_are_refused() {
        let input = Tensor::zeros([4, 2], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1_000_000_000, 1, 0]);
        let data = Dataset::new("t", vec![("input".into(), input), ("labels".into(), labels)]).unwrap();
        let spec = ModelSpec::parse("mlp", sizes()).unwrap();
        let error = plan(&spec, &data, &data).err().unwrap().to_string();
        assert_eq!(
            error,
            "training label 1000000000 (item 1) would make 1000000001 classes; labels are class ids 0..N-1 (at most 1048576 classes): check the label column"
        );
        let flat = Dataset::new(
            "t",
            vec![
                ("input".into(), Tensor::zeros([4], tch::kind::FLOAT_CPU)),
                ("labels".into(), Tensor::from_slice(&[0i64, 1, 0, 1])),
            ],
        )
        .unwrap();
        let error = plan(&spec, &flat, &flat).err().unwrap().to_string();
        assert!(error.starts_with("the mlp model needs 'input' with a row per example"), "{error}");
        let gpt = ModelSpec::parse("gpt", Sizes { max_seq_length: 1, ..sizes() }).unwrap_err().to_string();
        assert_eq!(gpt, "max_seq_length must be at least 2 for the gpt model, which predicts each next token (got 1)");
    }
}
