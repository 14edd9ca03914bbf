//! Mistral: the Llama decoder with a sliding attention window (used unless
//! sliding_window is null), which the host refuses where it would act.

use super::decoders::{self, DecoderKind};
use super::Registration;
use crate::engine::models::pretrained::decoder::AttentionBiases;

pub const REGISTRATION: Registration =
    Registration { model_type: "mistral", causal_lm: true, parse: |text| decoders::parse(text, &MISTRAL) };

static MISTRAL: DecoderKind = DecoderKind {
    model_type: "mistral",
    class_stem: "Mistral",
    biases: |config| AttentionBiases { qkv: config.attention_bias, output: config.attention_bias },
    window: |config| config.sliding_window,
};
