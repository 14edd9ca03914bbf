//! What the Llama-style decoders share: one config shape, one network ([`Decoder`]); each
//! architecture's file says only what differs, as a [`DecoderKind`]: its layers' specs,
//! its model spec and PEFT's default LoRA targets for it.

use super::{head_class, Architecture, Build, Network, Positions};
use crate::engine::activations::TransformerShape;
use crate::engine::models::pretrained::config::{Common, ConfigError, DecoderConfig};
use crate::engine::models::pretrained::decoder::{Decoder, LayerSpec, ModelSpec, Shape};
use crate::engine::models::pretrained::Head;

/// One decoder architecture's own rules.
#[derive(Debug)]
pub struct DecoderKind {
    pub model_type: &'static str,
    /// transformers' class name stem (`Llama` for LlamaForCausalLM).
    pub class_stem: &'static str,
    /// The classifier's stem where it differs (Gemma3TextForSequenceClassification).
    pub classifier_stem: Option<&'static str>,
    /// Layer `index`'s spec (required of every decoder: a new one says its biases and
    /// its attention window, rather than inheriting Llama's by omission).
    pub layer: fn(&DecoderConfig, usize) -> Result<LayerSpec, ConfigError>,
    /// The model's spec (RoPE sets, embedding scale, final norm, logit cap).
    pub model: fn(&DecoderConfig) -> Result<ModelSpec, ConfigError>,
    /// PEFT's default LoRA targets (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING);
    /// empty where PEFT has none, so the user names them.
    pub lora_targets: &'static [&'static str],
}

/// PEFT's default LoRA targets for most decoders.
pub const Q_AND_V: &[&str] = &["q_proj", "v_proj"];

/// Reads config.json as a decoder of `kind`.
pub fn parse(text: &str, kind: &'static DecoderKind) -> serde_json::Result<Box<dyn Architecture>> {
    Ok(Box::new(DecoderArch { kind, config: serde_json::from_str(text)? }))
}

#[derive(Debug)]
struct DecoderArch {
    kind: &'static DecoderKind,
    config: DecoderConfig,
}

impl DecoderArch {
    fn layer_specs(&self) -> Result<Vec<LayerSpec>, ConfigError> {
        (0..self.config.num_hidden_layers.max(0) as usize).map(|i| (self.kind.layer)(&self.config, i)).collect()
    }
}

impl Architecture for DecoderArch {
    fn model_type(&self) -> &'static str {
        self.kind.model_type
    }

    fn class_name(&self, head: &Head) -> String {
        match (head, self.kind.classifier_stem) {
            (Head::SequenceClassification { .. }, Some(stem)) => head_class(stem, head),
            _ => head_class(self.kind.class_stem, head),
        }
    }

    fn weight_prefix(&self) -> &'static str {
        "model"
    }

    fn classifier_weight(&self) -> &'static str {
        "score.weight"
    }

    fn embedding_weight(&self) -> &'static str {
        "model.embed_tokens.weight"
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        self.kind.lora_targets
    }

    fn positions(&self, _: &Common) -> Positions {
        Positions::Rotary(self.config.max_position_embeddings)
    }

    fn transformer_shape(&self) -> TransformerShape {
        let c = &self.config;
        TransformerShape { layers: c.num_hidden_layers, width: c.hidden_size, heads: c.num_attention_heads }
    }

    fn check(&self, _: &Common, _: i64) -> Result<(), ConfigError> {
        self.config.check()?;
        (self.kind.model)(&self.config)?;
        self.layer_specs().map(|_| ())
    }

    fn build(&self, b: &Build) -> Result<Box<dyn Network>, ConfigError> {
        let shape =
            Shape { config: &self.config, model: (self.kind.model)(&self.config)?, layers: self.layer_specs()? };
        Ok(Box::new(Decoder::new(b.src, b.root, b.common, shape, b.head, b.checkpointing)?))
    }
}

/// Whether layer `index` has a sliding window: as layer_types says ("sliding_attention" or
/// "full_attention"), or without layer_types as the architecture's `default` rule.
pub fn sliding_layer(
    config: &DecoderConfig,
    index: usize,
    default: impl Fn(usize) -> bool,
) -> Result<bool, ConfigError> {
    let Some(types) = &config.layer_types else { return Ok(default(index)) };
    match types.get(index).map(String::as_str) {
        Some("sliding_attention") => Ok(true),
        Some("full_attention") => Ok(false),
        other => Err(ConfigError::invalid(
            format!("layer_types[{index}]"),
            format!("is {other:?};"),
            format!("each of the {} layers is \"full_attention\" or \"sliding_attention\"", config.num_hidden_layers),
        )),
    }
}
