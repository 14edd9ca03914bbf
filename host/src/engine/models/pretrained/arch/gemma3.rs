//! Gemma 3 (text): Gemma 2's layer (sandwich norms, (1 + w) RMSNorm, the scale from
//! query_pre_attn_scalar, optional soft caps) with q/k norms, and two RoPE sets: the
//! sliding layers' (rope_parameters.sliding_attention, or rope_local_base_freq) and the
//! global layers' (rope_parameters.full_attention, or rope_theta and rope_scaling).
//! Without layer_types, every sixth layer is global.

use serde_json::Value;

use super::decoders::{self, DecoderKind, Q_AND_V};
use super::Registration;
use crate::engine::models::pretrained::config::{ConfigError, DecoderConfig};
use crate::engine::models::pretrained::decoder::{LayerSpec, ModelSpec};
use crate::engine::ops::norm::NormKind;
use crate::engine::ops::rope::Rope;

pub const REGISTRATION: Registration =
    Registration { model_type: "gemma3_text", causal_lm: true, parse: |text| decoders::parse(text, &GEMMA3) };

/// The RoPE set ids of [`ModelSpec::ropes`].
const LOCAL: usize = 0;
const GLOBAL: usize = 1;

static GEMMA3: DecoderKind = DecoderKind {
    model_type: "gemma3_text",
    class_stem: "Gemma3",
    classifier_stem: Some("Gemma3Text"),
    layer: |config, index| {
        let sliding = decoders::sliding_layer(config, index, |i| (i + 1) % 6 != 0)?;
        Ok(LayerSpec {
            norm: NormKind::RmsUnitOffset,
            qk_norm: true,
            sandwich_norms: true,
            attention_soft_cap: config.attn_logit_softcapping,
            window: config.sliding_window.filter(|_| sliding),
            rope: if sliding { LOCAL } else { GLOBAL },
            scale: config.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5),
            ..LayerSpec::llama(config)?
        })
    },
    model: |config| {
        let gemma = super::gemma::model_spec(config)?;
        Ok(ModelSpec { ropes: ropes(config)?, logit_soft_cap: config.final_logit_softcapping, ..gemma })
    },
    lora_targets: Q_AND_V,
};

/// The local and global RoPE settings, from transformers 5's nested rope_parameters or
/// the older flat keys (defaults: 10000 local, 1000000 global).
fn ropes(config: &DecoderConfig) -> Result<Vec<Rope>, ConfigError> {
    let nested = config.rope_parameters.as_ref().filter(|p| p.get("full_attention").is_some());
    let [local, global] = match nested {
        Some(params) => ["sliding_attention", "full_attention"].map(|kind| {
            let key = format!("rope_parameters.{kind}");
            let theta = if kind == "full_attention" { 1_000_000.0 } else { 10_000.0 };
            config.rope_from(params.get(kind).filter(|v| !Value::is_null(v)), &key, theta)
        }),
        None => {
            let flat = config.rope_scaling.as_ref().or(config.rope_parameters.as_ref()).filter(|v| !v.is_null());
            let global = config.rope_from(flat, "rope_scaling", config.rope_theta.unwrap_or(1_000_000.0));
            [config.rope_from(None, "rope_local_base_freq", config.rope_local_base_freq.unwrap_or(10_000.0)), global]
        }
    };
    Ok(vec![local?, global?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::rope::RopeScaling;

    fn config(extra: &str) -> DecoderConfig {
        let text = format!(
            r#"{{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4{extra}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn both_config_formats_give_the_local_and_global_rope_sets() {
        // transformers 4.5x's flat keys (Gemma 3 4B's config.json).
        let flat = config(
            r#", "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0}"#,
        );
        let [local, global]: [Rope; 2] = ropes(&flat).unwrap().try_into().unwrap();
        assert_eq!(local, Rope { theta: 10_000.0, scaling: RopeScaling::None });
        assert_eq!(global, Rope { theta: 1_000_000.0, scaling: RopeScaling::Linear { factor: 8.0 } });
        let nested = config(
            r#", "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 50.0}, "full_attention": {"rope_type": "yarn", "factor": 2.0}}"#,
        );
        assert_eq!(
            ropes(&nested).unwrap_err().to_string(),
            "rope_parameters.full_attention.rope_type 'yarn' is not supported (this host implements default, linear, llama3 and longrope)"
        );
        // Without layer_types every sixth layer is global and uses the global set.
        let specs: Vec<LayerSpec> = (0..6).map(|i| (GEMMA3.layer)(&flat, i).unwrap()).collect();
        let global_layers: Vec<usize> = (0..6).filter(|&i| specs[i].rope == GLOBAL).collect();
        assert_eq!(global_layers, [5]);
    }
}
