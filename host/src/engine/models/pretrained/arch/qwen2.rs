//! Qwen2 and Qwen2.5: the Llama decoder with biases on q, k and v (never on o), and a
//! sliding window only with use_sliding_window.

use super::decoders::{self, DecoderKind};
use super::Registration;
use crate::engine::models::pretrained::decoder::AttentionBiases;

pub const REGISTRATION: Registration =
    Registration { model_type: "qwen2", causal_lm: true, parse: |text| decoders::parse(text, &QWEN2) };

static QWEN2: DecoderKind = DecoderKind {
    model_type: "qwen2",
    class_stem: "Qwen2",
    biases: |_| AttentionBiases { qkv: true, output: false },
    window: |config| config.sliding_window.filter(|_| config.use_sliding_window == Some(true)),
};
