//! Qwen3: Qwen2's decoder with an RMSNorm on each query and key head (over head_dim,
//! before RoPE), and biases on q, k, v and o only where attention_bias says.

use super::decoders::{self, DecoderKind, Q_AND_V};
use super::Registration;
use crate::engine::models::pretrained::decoder::{LayerSpec, ModelSpec};

pub const REGISTRATION: Registration =
    Registration { model_type: "qwen3", causal_lm: true, parse: |text| decoders::parse(text, &QWEN3) };

static QWEN3: DecoderKind = DecoderKind {
    model_type: "qwen3",
    class_stem: "Qwen3",
    classifier_stem: None,
    layer: |config, index| {
        Ok(LayerSpec { qk_norm: true, window: super::qwen2::window(config, index)?, ..LayerSpec::llama(config)? })
    },
    model: ModelSpec::llama,
    lora_targets: Q_AND_V,
};
