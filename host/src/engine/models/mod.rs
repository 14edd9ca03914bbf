//! The models the host trains: built-in architectures chosen by name, or a TorchScript
//! module from PyTorch. A model reads the batch fields it needs and returns named outputs,
//! `logits` first; a loss plugin receives all of them.

mod cnn;
mod mlp;
mod torchscript;
mod transformer;

use anyhow::Result;
use tch::{nn, Kind, Tensor};

use crate::config::arguments::TrainingArguments;
use crate::engine::data::{Batch, Dataset};
use crate::error::InputError;

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

/// A model's outputs by name; `logits` is always there.
pub struct Outputs {
    pub fields: Vec<(String, Tensor)>,
}

impl Outputs {
    pub fn logits(logits: Tensor) -> Self {
        Self { fields: vec![("logits".to_owned(), logits)] }
    }

    pub fn get_logits(&self) -> &Tensor {
        &self.fields.iter().find(|(n, _)| n == "logits").expect("models return logits").1
    }

    pub fn to_plugin(&self) -> plugin_api::Tensors {
        let mut tensors = plugin_api::Tensors::new();
        for (name, tensor) in &self.fields {
            tensors.insert(name, tensor.shallow_clone());
        }
        tensors
    }
}

pub trait Model {
    /// The forward pass over a batch; `train` enables dropout (and training-mode layers).
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs>;

    /// Greedy completion of a prompt of token ids [T], for causal language models (others:
    /// `None`): the prompt followed by up to `new_tokens` tokens, ending at `stop`.
    fn generate(&self, _prompt: &Tensor, _new_tokens: i64, _stop: Option<i64>) -> Option<Result<Tensor>> {
        None
    }

    /// The name PyTorch gives a parameter (the VarStore's name unless the model renames).
    fn export_name(&self, var_name: &str) -> String {
        var_name.to_owned()
    }
}

/// What the trainer needs to know of a model beyond its forward pass.
#[derive(Debug, Clone)]
pub struct Shape {
    pub task: Task,
}

/// Builds the model the arguments name, its parameters under `root`.
pub fn build(
    args: &TrainingArguments,
    root: &nn::Path,
    train: &Dataset,
    eval: &Dataset,
) -> Result<(Box<dyn Model>, Shape)> {
    let spec = args.model.as_str();
    if let Some(file) = spec.strip_prefix("torchscript:") {
        let model = torchscript::TorchScript::load(std::path::Path::new(file), root)?;
        let shape = Shape { task: Task::Classification };
        return Ok((Box::new(model), shape));
    }
    let positive = |name: &str, value: i64| -> Result<i64, InputError> {
        if value > 0 {
            Ok(value)
        } else {
            Err(InputError::new(format!("{name} must be > 0 for the {spec} model (got {value})")))
        }
    };
    let hidden = positive("hidden_size", args.hidden_size)?;
    let layers = positive("num_hidden_layers", args.num_hidden_layers)?;
    match spec {
        "mlp" | "cnn" => {
            let num_labels = classes(args, train, eval)?;
            let input = train.field("input").ok_or_else(|| {
                InputError::new(format!(
                    "the {spec} model reads the data field 'input', which the data does not have (fields: {}); name the features field 'input' or set feature_columns",
                    train.names().join(", ")
                ))
            })?;
            let model: Box<dyn Model> = if spec == "mlp" {
                let features: i64 = input.size()[1..].iter().product();
                let mut widths = vec![features];
                widths.extend(std::iter::repeat_n(hidden, layers as usize));
                widths.push(num_labels);
                Box::new(Mlp::new(root, &widths, args.dropout))
            } else {
                Box::new(cnn::Cnn::new(root, &input.size(), layers, hidden, num_labels, args.dropout)?)
            };
            Ok((model, Shape { task: Task::Classification }))
        }
        "transformer" | "gpt" => {
            let heads = positive("num_attention_heads", args.num_attention_heads)?;
            if hidden % heads != 0 {
                return Err(InputError::new(format!(
                    "num_attention_heads ({heads}) must divide hidden_size ({hidden})"
                ))
                .into());
            }
            let vocab = vocab_size(args, train, eval)?;
            let config = transformer::Config {
                vocab,
                width: hidden,
                layers,
                heads,
                context: positive("max_seq_length", args.max_seq_length)?,
                dropout: args.dropout,
            };
            if spec == "gpt" {
                let model = transformer::Gpt::new(root, &config);
                Ok((Box::new(model), Shape { task: Task::CausalLm }))
            } else {
                let num_labels = classes(args, train, eval)?;
                let model = transformer::EncoderClassifier::new(root, &config, num_labels);
                Ok((Box::new(model), Shape { task: Task::Classification }))
            }
        }
        other => Err(InputError::new(format!(
            "model '{other}' is not known; use mlp, cnn, transformer, gpt or torchscript:FILE.pt"
        ))
        .into()),
    }
}

/// The number of classes: `num_labels`, else the largest label + 1; every label must be a
/// class or -100 (ignored).
fn classes(args: &TrainingArguments, train: &Dataset, eval: &Dataset) -> Result<i64, InputError> {
    let labels = [train.labels(), eval.labels()];
    if labels.iter().any(|l| l.is_floating_point()) {
        return Err(InputError::new(
            "labels are not whole numbers: the built-in models classify (give class ids 0..N-1), or use a loss plugin with a torchscript model",
        ));
    }
    let largest = labels.iter().map(|l| l.max().int64_value(&[])).max().unwrap_or(0);
    let num_labels = args.num_labels.unwrap_or(largest + 1);
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
fn vocab_size(args: &TrainingArguments, train: &Dataset, eval: &Dataset) -> Result<i64, InputError> {
    let ids: Vec<&Tensor> = [train, eval].iter().filter_map(|d| d.field("input_ids")).collect();
    if ids.len() < 2 {
        return Err(InputError::new(format!(
            "the {} model reads the data field 'input_ids' (token ids), which the data does not have (fields: {}); give JSONL text with tokenizer_file, or a file with input_ids",
            args.model,
            train.names().join(", ")
        )));
    }
    let largest = ids.iter().map(|t| t.max().int64_value(&[])).max().unwrap_or(0);
    let vocab = args.vocab_size.or(train.vocab_size).unwrap_or(largest + 1);
    if largest >= vocab {
        return Err(InputError::new(format!("token id {largest} is outside vocab_size {vocab}")));
    }
    Ok(vocab)
}

/// The batch's `input` as the float features a model computes with.
pub(crate) fn features<'a>(batch: &'a Batch, model: &str) -> Result<&'a Tensor> {
    Ok(batch.require("input", model)?)
}
