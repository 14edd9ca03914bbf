//! The architecture registry: one file per architecture declares what the host knows of it
//! (config.json's `model_type`, transformers' class names, how its config is read and
//! checked, the base model's weight prefix, PEFT's default LoRA targets, its positions) and
//! builds its network from the shared blocks (decoder, encoder, GPT-2). Adding an
//! architecture is its file plus one line in [`REGISTRY`].

mod bert;
mod decoders;
mod encoders;
mod gemma;
mod gemma2;
mod gemma3;
mod gpt2;
mod llama;
mod mistral;
mod opt;
mod phi3;
mod qwen2;
mod qwen3;
mod roberta;

use crate::engine::ops::attention::Mask;
use tch::{nn, Tensor};

use super::config::{Common, ConfigError};
use super::layers::Embedding;
use super::params::ParamSource;
use super::Head;
use crate::engine::activations::TransformerShape;
use crate::engine::models::HeadInput;

/// Every architecture the host implements, in the order errors list them.
const REGISTRY: &[Registration] = &[
    llama::REGISTRATION,
    mistral::REGISTRATION,
    qwen2::REGISTRATION,
    qwen3::REGISTRATION,
    gemma::REGISTRATION,
    gemma2::REGISTRATION,
    gemma3::REGISTRATION,
    phi3::REGISTRATION,
    gpt2::REGISTRATION,
    opt::REGISTRATION,
    bert::REGISTRATION,
    roberta::REGISTRATION,
];

/// An architecture's entry: its model_type, whether the port has a language-model head
/// (the encoders are classifiers), and how its config.json is read.
pub struct Registration {
    pub model_type: &'static str,
    pub causal_lm: bool,
    pub parse: fn(&str) -> serde_json::Result<Box<dyn Architecture>>,
}

/// How a model knows where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// A learned table of this many positions: longer input would index past it.
    Learned(i64),
    /// Rotary embeddings: they go on, but not past the positions the model was trained on.
    Rotary(i64),
}

impl Positions {
    pub fn max_length(self) -> i64 {
        match self {
            Positions::Learned(n) | Positions::Rotary(n) => n,
        }
    }
}

/// One architecture, its config.json read.
pub trait Architecture: std::fmt::Debug + Send + Sync {
    fn model_type(&self) -> &'static str;

    /// transformers' class for the model with `head` (config.json's `architectures`).
    fn class_name(&self, head: &Head) -> String;

    /// The base model's module in weight names (`model`, `transformer`, `bert`).
    fn weight_prefix(&self) -> &'static str;

    /// The classifier weight whose rows are the labels, as the head model names it.
    fn classifier_weight(&self) -> &'static str;

    /// The token embedding, whose rows are config.json's vocab_size.
    fn embedding_weight(&self) -> &'static str;

    /// PEFT's default LoRA targets (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
    fn lora_targets(&self) -> &'static [&'static str];

    /// Whether PEFT stores this architecture's adapters fan_in_fan_out (GPT-2's Conv1D).
    fn fan_in_fan_out(&self) -> bool {
        false
    }

    /// Whether the port has a causal language-model head (its registration says).
    fn causal_lm(&self) -> bool {
        REGISTRY.iter().any(|r| r.model_type == self.model_type() && r.causal_lm)
    }

    fn positions(&self, common: &Common) -> Positions;

    /// The embedding tables by name (suffix), which transformers' floating-point count
    /// (`num_parameters(exclude_embeddings=True)`) leaves out.
    fn embedding_weights(&self) -> &'static [&'static str] {
        &["embed_tokens.weight"]
    }

    /// Modules HF's weight decay leaves out by type that the default name rule misses
    /// (GPT-2's LayerNorms are named ln_1, ln_2, ln_f).
    fn layer_norm_modules(&self) -> &'static [&'static str] {
        &[]
    }

    /// Layers, width and heads, for the activation estimate before the model is built.
    fn transformer_shape(&self) -> TransformerShape;

    /// Refuses what the port does not implement, naming the key. `max_seq_length` is the
    /// longest sequence the run uses (0 when none is known, as for generation).
    fn check(&self, common: &Common, max_seq_length: i64) -> Result<(), ConfigError>;

    /// The network with its head.
    fn build(&self, place: &Build) -> Result<Box<dyn Network>, ConfigError>;
}

/// What a network is built from: the checkpoint's parameters (`src`) made under `root`,
/// config.json's common keys, the head, and whether blocks recompute in the backward pass.
pub struct Build<'a> {
    pub src: &'a ParamSource<'a>,
    pub root: &'a nn::Path<'a>,
    pub common: &'a Common,
    pub head: &'a Head,
    pub checkpointing: bool,
}

/// What a forward pass reads of a batch.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// Token ids [B, T].
    pub ids: &'a Tensor,
    /// [B, T], 1 for real tokens and 0 for padding.
    pub mask: Option<&'a Tensor>,
    pub token_types: Option<&'a Tensor>,
    /// Packed rows' positions [B, T], restarting at 0 where each example begins: each
    /// example attends within itself and is placed from position 0.
    pub positions: Option<&'a Tensor>,
    /// Whether `mask` has zeros, where the batch knows it (no read of the device).
    pub padded: Option<bool>,
}

impl<'a> Inputs<'a> {
    /// Token ids alone.
    pub fn ids(ids: &'a Tensor) -> Self {
        Self { ids, mask: None, token_types: None, positions: None, padded: None }
    }

    /// The attention mask of these inputs: packed rows', else padding's (looked at on the
    /// device only where the batch does not know whether it has any).
    pub fn attention_mask(&self, causal: bool, window: Option<i64>) -> Mask {
        match (self.positions, self.padded) {
            (Some(positions), _) => Mask::packed(positions, self.mask, window),
            (None, Some(false)) => Mask::new(self.ids, None, causal, window),
            (None, Some(true)) => match self.mask {
                Some(mask) => Mask::with_padding(self.ids, mask, causal, window),
                None => Mask::new(self.ids, None, causal, window),
            },
            (None, None) => Mask::new(self.ids, self.mask, causal, window),
        }
    }
}

/// The keys and values of the positions decoded so far, per layer (generation's KV cache).
#[derive(Default)]
pub struct KvCache {
    /// Each layer's keys and values [B, kv heads, positions, head_dim], once it has run.
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// The positions held.
    pub length: i64,
}

impl KvCache {
    /// The positions [1, new] of `new` tokens after those held.
    pub fn positions(&self, new: i64, device: tch::Device) -> Tensor {
        Tensor::arange_start(self.length, self.length + new, (tch::Kind::Int64, device)).unsqueeze(0)
    }

    /// `x` [B, new, width] through `layers` layers, each given its slot, and the cache
    /// then holding `new` positions more.
    pub fn run(
        &mut self,
        layers: usize,
        x: Tensor,
        mut layer: impl FnMut(usize, &Tensor, &mut Option<(Tensor, Tensor)>) -> Tensor,
    ) -> Tensor {
        let new = x.size()[1];
        self.layers.resize_with(layers, || None);
        let x = self.layers.iter_mut().enumerate().fold(x, |x, (index, slot)| layer(index, &x, slot));
        self.length += new;
        x
    }

    /// A layer's keys and values [B, heads, new, D] after those `slot` holds (which takes
    /// them all); without a slot, as they are.
    pub fn extend(slot: Option<&mut Option<(Tensor, Tensor)>>, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let Some(slot) = slot else { return (k, v) };
        let (k, v) = match slot.take() {
            Some((past_k, past_v)) => (Tensor::cat(&[past_k, k], 2), Tensor::cat(&[past_v, v], 2)),
            None => (k, v),
        };
        *slot = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }
}

/// A built network: what the trainer and the generator ask of it.
pub trait Network: std::fmt::Debug {
    /// The head's logits: [B, T, vocab] for a language model, [B, labels] for a classifier.
    fn logits(&self, inputs: &Inputs, train: bool) -> Tensor;

    /// A language model's last hidden states and its head, for the loss without logits;
    /// `None` for a classifier.
    fn head_input(&self, inputs: &Inputs, train: bool) -> Option<HeadInput>;

    /// Whether it reads packed rows' positions (`Inputs::positions`); one that does not
    /// would let packed examples attend to each other, and is refused packed data.
    fn reads_packed_positions(&self) -> bool {
        false
    }

    /// Generation with a KV cache: the logits [B, new, vocab] of the tokens `ids` [B, new]
    /// that follow the `cache.length` positions in `cache`, which takes their keys and
    /// values. `None`: this network reruns the whole sequence instead.
    fn logits_after(&self, _ids: &Tensor, _cache: &mut KvCache) -> Option<Tensor> {
        None
    }

    /// The input embedding (where NEFTune adds its noise).
    fn input_embeddings(&mut self) -> &mut Embedding;
}

/// Reads config.json into its architecture. An unknown model_type lists the known ones.
pub fn parse(text: &str) -> Result<(Common, Box<dyn Architecture>), String> {
    let common: Common = serde_json::from_str(text).map_err(|e| format!("config.json: {e}"))?;
    let Some(registration) = REGISTRY.iter().find(|r| r.model_type == common.model_type) else {
        return Err(format!(
            "config.json: model_type '{}' is not supported; this host implements {}",
            common.model_type,
            supported().join(", ")
        ));
    };
    let arch = (registration.parse)(text).map_err(|e| format!("config.json: {e}"))?;
    Ok((common, arch))
}

/// The model_types the host implements.
pub fn supported() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.model_type).collect()
}

/// The model_types that can be causal language models.
pub fn causal_language_models() -> Vec<&'static str> {
    REGISTRY.iter().filter(|r| r.causal_lm).map(|r| r.model_type).collect()
}

/// transformers' class name of a model with `head`: `{stem}ForCausalLM` or
/// `{stem}ForSequenceClassification`.
fn head_class(stem: &str, head: &Head) -> String {
    match head {
        Head::CausalLm => format!("{stem}ForCausalLM"),
        Head::SequenceClassification { .. } => format!("{stem}ForSequenceClassification"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_architecture_reads_its_own_model_type() {
        for registration in REGISTRY {
            let text = format!(
                r#"{{"model_type": "{}", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}}"#,
                registration.model_type
            );
            let (common, arch) = parse(&text).unwrap();
            assert_eq!(arch.model_type(), registration.model_type);
            assert_eq!(common.model_type, registration.model_type);
            assert_eq!(arch.causal_lm(), registration.causal_lm, "{}", registration.model_type);
        }
    }

    #[test]
    fn an_unknown_model_type_lists_the_known_ones() {
        let unknown = parse(r#"{"model_type": "t5", "vocab_size": 10}"#).unwrap_err();
        assert_eq!(
            unknown,
            "config.json: model_type 't5' is not supported; this host implements llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3, gpt2, opt, bert, roberta"
        );
    }
}
