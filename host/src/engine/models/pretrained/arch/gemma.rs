//! Gemma: the Llama decoder with Gemma's RMSNorm (scaled by 1 + weight, in float32), the
//! token embeddings scaled by sqrt(hidden_size), a GeGLU MLP (a config's legacy "gelu"
//! means the tanh approximation, as transformers reads it) and tied embeddings.

use super::decoders::{self, DecoderKind, Q_AND_V};
use super::Registration;
use crate::engine::models::pretrained::config::{ConfigError, DecoderConfig};
use crate::engine::models::pretrained::decoder::{LayerSpec, ModelSpec};
use crate::engine::ops::activation::Activation;
use crate::engine::ops::norm::NormKind;

pub const REGISTRATION: Registration =
    Registration { model_type: "gemma", causal_lm: true, parse: |text| decoders::parse(text, &GEMMA) };

static GEMMA: DecoderKind = DecoderKind {
    model_type: "gemma",
    class_stem: "Gemma",
    classifier_stem: None,
    layer: |config, _| {
        let llama = LayerSpec::llama(config)?;
        let activation = if llama.activation == Activation::Gelu { Activation::GeluTanh } else { llama.activation };
        Ok(LayerSpec { norm: NormKind::RmsUnitOffset, activation, ..llama })
    },
    model: model_spec,
    lora_targets: Q_AND_V,
};

/// Gemma's model spec (Gemma 2 shares it and adds the logit cap).
pub fn model_spec(config: &DecoderConfig) -> Result<ModelSpec, ConfigError> {
    let embedding_scale = Some((config.hidden_size as f64).sqrt());
    Ok(ModelSpec { embedding_scale, norm: NormKind::RmsUnitOffset, ..ModelSpec::llama(config)? })
}
