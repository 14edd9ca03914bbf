//! Llama (1 to 3.x): RMSNorm, RoPE (default, linear or llama3 scaling), grouped-query
//! attention, a gated MLP; biases where attention_bias says; no attention window.

use super::decoders::{self, DecoderKind, Q_AND_V};
use super::Registration;
use crate::engine::models::pretrained::decoder::{LayerSpec, ModelSpec};

pub const REGISTRATION: Registration =
    Registration { model_type: "llama", causal_lm: true, parse: |text| decoders::parse(text, &LLAMA) };

static LLAMA: DecoderKind = DecoderKind {
    model_type: "llama",
    class_stem: "Llama",
    classifier_stem: None,
    layer: |config, _| LayerSpec::llama(config),
    model: ModelSpec::llama,
    lora_targets: Q_AND_V,
};
