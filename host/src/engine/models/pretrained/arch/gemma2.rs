//! Gemma 2: Gemma's decoder with four norms per layer (the attention's and the MLP's
//! outputs normed too), attention scores and final logits soft-capped, the attention
//! scale from query_pre_attn_scalar, and a sliding window on the layers layer_types
//! names "sliding_attention" (without layer_types: every other layer, from the first).

use super::decoders::{self, DecoderKind, Q_AND_V};
use super::Registration;
use crate::engine::models::pretrained::decoder::{LayerSpec, ModelSpec};
use crate::engine::ops::norm::NormKind;

pub const REGISTRATION: Registration =
    Registration { model_type: "gemma2", causal_lm: true, parse: |text| decoders::parse(text, &GEMMA2) };

static GEMMA2: DecoderKind = DecoderKind {
    model_type: "gemma2",
    class_stem: "Gemma2",
    classifier_stem: None,
    layer: |config, index| {
        let sliding = decoders::sliding_layer(config, index, |i| i % 2 == 0)?;
        let scale = config.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5);
        Ok(LayerSpec {
            norm: NormKind::RmsUnitOffset,
            sandwich_norms: true,
            attention_soft_cap: config.attn_logit_softcapping,
            window: config.sliding_window.filter(|_| sliding),
            scale,
            ..LayerSpec::llama(config)?
        })
    },
    model: |config| {
        Ok(ModelSpec { logit_soft_cap: config.final_logit_softcapping, ..super::gemma::model_spec(config)? })
    },
    lora_targets: Q_AND_V,
};
