//! Qwen2 and Qwen2.5: the Llama decoder with biases on q, k and v (never on o); with
//! use_sliding_window, a window on the layers layer_types names "sliding_attention" (without
//! layer_types: those from max_window_layers on, as transformers computes them).

use super::decoders::{self, DecoderKind, Q_AND_V};
use super::Registration;
use crate::engine::models::pretrained::config::{ConfigError, DecoderConfig};
use crate::engine::models::pretrained::decoder::{AttentionBiases, LayerSpec, ModelSpec};

pub const REGISTRATION: Registration =
    Registration { model_type: "qwen2", causal_lm: true, parse: |text| decoders::parse(text, &QWEN2) };

static QWEN2: DecoderKind = DecoderKind {
    model_type: "qwen2",
    class_stem: "Qwen2",
    classifier_stem: None,
    layer: |config, index| {
        let biases = AttentionBiases { qkv: true, output: false };
        Ok(LayerSpec { biases, window: window(config, index)?, ..LayerSpec::llama(config)? })
    },
    model: ModelSpec::llama,
    lora_targets: Q_AND_V,
};

/// transformers' Qwen2Config and Qwen3Config: no window without use_sliding_window.
pub fn window(config: &DecoderConfig, index: usize) -> Result<Option<i64>, ConfigError> {
    let Some(window) = config.sliding_window.filter(|_| config.use_sliding_window == Some(true)) else {
        return Ok(None);
    };
    let sliding = decoders::sliding_layer(config, index, |i| i as i64 >= config.max_window_layers.unwrap_or(28))?;
    Ok(sliding.then_some(window))
}
