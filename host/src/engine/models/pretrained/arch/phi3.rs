//! Phi-3: the Llama decoder as the checkpoint stores it, with q/k/v in one `qkv_proj` and
//! gate/up in one `gate_up_proj`; RoPE on the first partial_rotary_factor of each head;
//! dropout on each layer's outputs (resid_pdrop); a sliding window on every layer where
//! sliding_window is set. PEFT has no default LoRA targets for it: the user names them.

use super::decoders::{self, DecoderKind};
use super::Registration;
use crate::engine::models::pretrained::decoder::{AttentionBiases, LayerSpec, ModelSpec};
use crate::engine::ops::norm::NormKind;

pub const REGISTRATION: Registration =
    Registration { model_type: "phi3", causal_lm: true, parse: |text| decoders::parse(text, &PHI3) };

static PHI3: DecoderKind = DecoderKind {
    model_type: "phi3",
    class_stem: "Phi3",
    classifier_stem: None,
    layer: |config, _| {
        Ok(LayerSpec {
            biases: AttentionBiases { qkv: false, output: false },
            fused_projections: true,
            residual_dropout: config.resid_pdrop,
            window: config.sliding_window,
            ..LayerSpec::llama(config)?
        })
    },
    model: |config| {
        let (ropes, rotary_dim) = (vec![config.rope()?], config.rotary_dim()?);
        Ok(ModelSpec { ropes, rotary_dim, embedding_scale: None, norm: NormKind::Rms, logit_soft_cap: None })
    },
    lora_targets: &[],
};
