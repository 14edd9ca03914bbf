//! What BERT and RoBERTa share: one config shape, one post-norm encoder network
//! ([`Encoder`]) fine-tuned for sequence classification; each file says what differs.

use super::{head_class, Architecture, Build, Network, Positions};
use crate::engine::activations::TransformerShape;
use crate::engine::models::pretrained::config::{Common, ConfigError, EncoderConfig};
use crate::engine::models::pretrained::encoder::Encoder;
use crate::engine::models::pretrained::Head;

/// One encoder architecture's own rules.
#[derive(Debug)]
pub struct EncoderKind {
    pub model_type: &'static str,
    pub class_stem: &'static str,
    pub classifier_weight: &'static str,
    pub embedding_weight: &'static str,
    /// RoBERTa: positions count from the padding index + 1, and the classifier is a
    /// two-layer head (dense, out_proj) rather than BERT's pooler and linear layer.
    pub roberta: bool,
}

pub fn parse(text: &str, kind: &'static EncoderKind) -> serde_json::Result<Box<dyn Architecture>> {
    Ok(Box::new(EncoderArch { kind, config: serde_json::from_str(text)? }))
}

#[derive(Debug)]
struct EncoderArch {
    kind: &'static EncoderKind,
    config: EncoderConfig,
}

impl EncoderArch {
    /// RoBERTa's padding index (config.json's pad_token_id, 1 by default).
    fn padding_index(common: &Common) -> i64 {
        common.pad_token_id.unwrap_or(1)
    }
}

impl Architecture for EncoderArch {
    fn model_type(&self) -> &'static str {
        self.kind.model_type
    }

    fn class_name(&self, head: &Head) -> String {
        head_class(self.kind.class_stem, head)
    }

    fn weight_prefix(&self) -> &'static str {
        self.kind.model_type
    }

    fn classifier_weight(&self) -> &'static str {
        self.kind.classifier_weight
    }

    fn embedding_weight(&self) -> &'static str {
        self.kind.embedding_weight
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["query", "value"]
    }

    fn positions(&self, common: &Common) -> Positions {
        let offset = if self.kind.roberta { Self::padding_index(common) + 1 } else { 0 };
        Positions::Learned(self.config.max_position_embeddings - offset)
    }

    fn embedding_weights(&self) -> &'static [&'static str] {
        &["word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight"]
    }

    fn transformer_shape(&self) -> TransformerShape {
        let c = &self.config;
        TransformerShape { layers: c.num_hidden_layers, width: c.hidden_size, heads: c.num_attention_heads }
    }

    fn check(&self, common: &Common, max_seq_length: i64) -> Result<(), ConfigError> {
        self.config.check(self.kind.roberta, Self::padding_index(common), max_seq_length)
    }

    fn build(&self, b: &Build) -> Result<Box<dyn Network>, ConfigError> {
        let Head::SequenceClassification { num_labels, .. } = b.head else {
            return Err(ConfigError::Head {
                model_type: self.kind.model_type.to_owned(),
                has: "an encoder: this host fine-tunes it for sequence classification".to_owned(),
            });
        };
        let (roberta, config) = (self.kind.roberta, &self.config);
        Ok(Box::new(Encoder::new(b.src, b.root, roberta, b.common, config, *num_labels, b.checkpointing)?))
    }
}
