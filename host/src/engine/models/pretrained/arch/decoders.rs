//! What the Llama-style decoders (Llama, Mistral, Qwen2) share: one config shape, one
//! network ([`Decoder`]); each architecture's file says only what differs, as a
//! [`DecoderKind`].

use super::{head_class, Architecture, Build, Network, Positions};
use crate::engine::models::pretrained::config::{Common, DecoderConfig};
use crate::engine::models::pretrained::decoder::{AttentionBiases, Decoder};
use crate::engine::models::pretrained::Head;

/// One decoder architecture's own rules.
#[derive(Debug)]
pub struct DecoderKind {
    pub model_type: &'static str,
    /// transformers' class name stem (`Llama` for LlamaForCausalLM).
    pub class_stem: &'static str,
    /// Which projections carry biases.
    pub biases: fn(&DecoderConfig) -> AttentionBiases,
    /// The sliding attention window the model uses, if any (required of every decoder, so
    /// that a new one cannot ignore its window by omission).
    pub window: fn(&DecoderConfig) -> Option<i64>,
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

    fn lora_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn positions(&self, _: &Common) -> Positions {
        Positions::Rotary(self.config.max_position_embeddings)
    }

    fn check(&self, _: &Common, max_seq_length: i64) -> Result<(), String> {
        self.config.check((self.kind.window)(&self.config), max_seq_length)
    }

    fn build(&self, b: &Build) -> Result<Box<dyn Network>, String> {
        let biases = (self.kind.biases)(&self.config);
        Ok(Box::new(Decoder::new(b.src, b.root, b.common, &self.config, biases, b.head, b.checkpointing)?))
    }
}
