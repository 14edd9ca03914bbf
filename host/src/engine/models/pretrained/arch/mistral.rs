//! Mistral: the Llama decoder with a sliding attention window on every layer (none when
//! sliding_window is null).

use super::decoders::{self, DecoderKind, Q_AND_V};
use super::Registration;
use crate::engine::models::pretrained::decoder::{LayerSpec, ModelSpec};

pub const REGISTRATION: Registration =
    Registration { model_type: "mistral", causal_lm: true, parse: |text| decoders::parse(text, &MISTRAL) };

static MISTRAL: DecoderKind = DecoderKind {
    model_type: "mistral",
    class_stem: "Mistral",
    classifier_stem: None,
    layer: |config, _| Ok(LayerSpec { window: config.sliding_window, ..LayerSpec::llama(config)? }),
    model: ModelSpec::llama,
    lora_targets: Q_AND_V,
};
