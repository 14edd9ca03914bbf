//! What the Llama-style decoders (Llama, Mistral, Qwen2) share: one config shape, one
//! network ([`Decoder`]); each architecture's file says only what differs, as a
//! [`DecoderKind`].

use super::{head_class, Architecture, Build, Network, Positions};
use crate::engine::models::pretrained::config::{Common, DecoderConfig};
use crate::engine::models::pretrained::decoder::{Decoder, LayerSpec};
use crate::engine::models::pretrained::Head;

/// One decoder architecture's own rules.
#[derive(Debug)]
pub struct DecoderKind {
    pub model_type: &'static str,
    /// transformers' class name stem (`Llama` for LlamaForCausalLM).
    pub class_stem: &'static str,
    /// Layer `index`'s spec (required of every decoder: a new one says its biases and
    /// its attention window, rather than inheriting Llama's by omission).
    pub layer: fn(&DecoderConfig, usize) -> Result<LayerSpec, String>,
}

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
    fn layer_specs(&self) -> Result<Vec<LayerSpec>, String> {
        (0..self.config.num_hidden_layers.max(0) as usize).map(|i| (self.kind.layer)(&self.config, i)).collect()
    }
}

impl Architecture for DecoderArch {
    fn model_type(&self) -> &'static str {
        self.kind.model_type
    }

    fn class_name(&self, head: &Head) -> String {
        head_class(self.kind.class_stem, head)
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
        &["q_proj", "v_proj"]
    }

    fn positions(&self, _: &Common) -> Positions {
        Positions::Rotary(self.config.max_position_embeddings)
    }

    fn check(&self, _: &Common, _: i64) -> Result<(), String> {
        self.config.check()?;
        self.layer_specs().map(|_| ())
    }

    fn build(&self, b: &Build) -> Result<Box<dyn Network>, String> {
        let specs = self.layer_specs()?;
        Ok(Box::new(Decoder::new(b.src, b.root, b.common, &self.config, specs, b.head, b.checkpointing)?))
    }
}
