//! A Hugging Face model folder's config.json, read into the settings the host's ports of
//! those architectures take (the registry in `arch` picks the shape by model_type). Defaults are transformers' own; a feature this host does not
//! implement (another RoPE scaling, an active sliding window, an activation it lacks) is
//! refused by its key, never run wrong.

use serde::Deserialize;
use serde_json::Value;

use crate::engine::ops::activation::Activation;
pub use crate::engine::ops::rope::{Rope, RopeScaling};

/// Why config.json describes a model the host does not build, by the key at fault.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// A value the ports do not implement, and what they do (`key value is not
    /// supported (supported)`).
    Unsupported { key: String, value: String, supported: String },
    /// A value outside what the key allows (`key value rule`).
    Invalid { key: String, value: String, rule: String },
    /// A key a setting needs (`key is missing for needed_by`).
    Missing { key: String, needed_by: String },
    /// A head the architecture does not have.
    Head { model_type: String, has: String },
}

impl ConfigError {
    pub fn unsupported(key: impl Into<String>, value: impl std::fmt::Display, supported: impl Into<String>) -> Self {
        ConfigError::Unsupported { key: key.into(), value: value.to_string(), supported: supported.into() }
    }

    pub fn invalid(key: impl Into<String>, value: impl std::fmt::Display, rule: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), value: value.to_string(), rule: rule.into() }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            ConfigError::Unsupported { key, value, supported } => {
                write!(f, "{key} {value} is not supported ({supported})")
            }
            ConfigError::Invalid { key, value, rule } => write!(f, "{key} {value} {rule}"),
            ConfigError::Missing { key, needed_by } => write!(f, "{key} is missing for {needed_by}"),
            ConfigError::Head { model_type, has } => write!(f, "{model_type} is {has}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// An activation name the ports implement, or the error naming `key`.
fn activation(key: &str, name: &str) -> Result<Activation, ConfigError> {
    Activation::parse(name).ok_or_else(|| {
        ConfigError::unsupported(key, format!("'{name}'"), format!("{} are", Activation::NAMES.join(", ")))
    })
}

/// What config.json holds for every family: its type, vocabulary, pad token and labels.
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    pub vocab_size: i64,
    #[serde(default, deserialize_with = "token_id")]
    pub pad_token_id: Option<i64>,
    #[serde(default, deserialize_with = "token_id")]
    pub eos_token_id: Option<i64>,
    #[serde(default)]
    pub id2label: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub num_labels: Option<i64>,
    #[serde(default = "initializer_range")]
    pub initializer_range: f64,
    /// transformers 5 writes `dtype`, earlier versions `torch_dtype`.
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

impl Common {
    /// The classes config.json names (id2label), if any.
    pub fn labels(&self) -> Option<i64> {
        self.id2label.as_ref().map(|m| m.len() as i64).or(self.num_labels)
    }

    /// The dtype the weights were saved in, as config.json says.
    pub fn saved_dtype(&self) -> Option<&str> {
        self.dtype.as_deref().or(self.torch_dtype.as_deref())
    }
}

/// A token id, or the first of a list (eos_token_id may be a list).
fn token_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::Array(ids)) => ids.first().and_then(Value::as_i64),
        _ => None,
    })
}

fn initializer_range() -> f64 {
    0.02
}

#[derive(Debug, Clone, Deserialize)]
pub struct DecoderConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default = "llama_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// The pretraining length (Phi-3's, beside its extended max_position_embeddings),
    /// where LongRoPE switches to its long factors.
    #[serde(default)]
    pub original_max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// llama: biases on q, k, v and o; qwen2 has them on q, k, v always.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub sliding_window: Option<i64>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Qwen2: the layers from this one on use the window (unless layer_types says).
    #[serde(default)]
    pub max_window_layers: Option<i64>,
    /// transformers 5: each layer's attention, "full_attention" or "sliding_attention".
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub pretraining_tp: Option<i64>,
    /// Gemma 2's name for hidden_act.
    #[serde(default)]
    pub hidden_activation: Option<String>,
    /// Gemma 2: the attention scale is query_pre_attn_scalar^-0.5.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// Phi-3: dropout on each layer's attention and MLP outputs.
    #[serde(default)]
    pub resid_pdrop: f64,
    /// Gemma: attention without the causal mask (an encoder use), not ported.
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    /// Gemma 3 before transformers 5: the sliding layers' RoPE base.
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
}

fn silu() -> String {
    "silu".to_owned()
}

fn llama_positions() -> i64 {
    2048
}

fn rms_norm_eps() -> f64 {
    1e-6
}

impl DecoderConfig {
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The RoPE settings, from transformers 5's `rope_parameters` or the older
    /// `rope_theta` and `rope_scaling`.
    pub fn rope(&self) -> Result<Rope, ConfigError> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref()).filter(|v| !v.is_null());
        let key = if self.rope_parameters.is_some() { "rope_parameters" } else { "rope_scaling" };
        self.rope_from(params, key, self.rope_theta.unwrap_or(10_000.0))
    }

    /// RoPE settings from the dict `params` (named `key` in errors), with `theta` where
    /// the dict has no rope_theta.
    pub fn rope_from(&self, params: Option<&Value>, key: &str, theta: f64) -> Result<Rope, ConfigError> {
        let get = |name: &str| params.and_then(|p| p.get(name)).and_then(Value::as_f64);
        let theta = get("rope_theta").unwrap_or(theta);
        let kind = params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let need = |name: &str| {
            get(name).ok_or_else(|| ConfigError::Missing {
                key: format!("{key}.{name}"),
                needed_by: format!("rope_type '{kind}'"),
            })
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: get("original_max_position_embeddings")
                    .unwrap_or(self.max_position_embeddings as f64),
            },
            "longrope" => {
                let pairs = self.rotary_dim()? / 2;
                let factors = |name: &str| -> Result<Vec<f64>, ConfigError> {
                    let list = params.and_then(|p| p.get(name)).and_then(Value::as_array).ok_or_else(|| {
                        ConfigError::Missing { key: format!("{key}.{name}"), needed_by: "rope_type 'longrope'".into() }
                    })?;
                    if list.len() as i64 != pairs {
                        return Err(ConfigError::invalid(
                            format!("{key}.{name}"),
                            format!("of {} entries", list.len()),
                            format!("needs {pairs}, one per rotated pair of dimensions"),
                        ));
                    }
                    list.iter()
                        .map(|v| {
                            v.as_f64()
                                .ok_or_else(|| ConfigError::invalid(format!("{key}.{name}"), v, "must be numbers"))
                        })
                        .collect()
                };
                // As transformers: Phi-3's top-level original_max_position_embeddings first.
                let original = self
                    .original_max_position_embeddings
                    .or_else(|| get("original_max_position_embeddings").map(|v| v as i64))
                    .unwrap_or(self.max_position_embeddings);
                if original < 1 {
                    return Err(ConfigError::invalid(
                        "original_max_position_embeddings",
                        original,
                        "must be at least 1",
                    ));
                }
                let factor = get("factor").unwrap_or(self.max_position_embeddings as f64 / original as f64);
                let attention_factor = get("attention_factor").unwrap_or(if factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / (original as f64).ln()).sqrt()
                });
                RopeScaling::LongRope {
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    original_max_position_embeddings: original,
                    attention_factor,
                }
            }
            other => {
                return Err(ConfigError::unsupported(
                    format!("{key}.rope_type"),
                    format!("'{other}'"),
                    "this host implements default, linear, llama3 and longrope",
                ))
            }
        };
        Ok(Rope { theta, scaling })
    }

    /// How many of each head's dimensions rotate: head_dim x partial_rotary_factor (from
    /// rope_parameters or the top level), rounded down as transformers does.
    pub fn rotary_dim(&self) -> Result<i64, ConfigError> {
        let params = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref()).filter(|v| !v.is_null());
        let fraction = params
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(Value::as_f64)
            .or(self.partial_rotary_factor)
            .unwrap_or(1.0);
        let dim = (self.head_dim() as f64 * fraction) as i64;
        if !(fraction > 0.0 && fraction <= 1.0) || dim < 2 || dim % 2 != 0 {
            return Err(ConfigError::invalid(
                "partial_rotary_factor",
                fraction,
                format!(
                    "gives {dim} rotary dimensions of head_dim {}; it must give an even number from 2 to head_dim",
                    self.head_dim()
                ),
            ));
        }
        Ok(dim)
    }

    /// hidden_act, or Gemma 2's hidden_activation where config.json has it.
    pub fn activation(&self) -> Result<Activation, ConfigError> {
        match &self.hidden_activation {
            Some(name) => activation("hidden_activation", name),
            None => activation("hidden_act", &self.hidden_act),
        }
    }

    /// Refuses what the port does not implement, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.rope()?;
        self.rotary_dim()?;
        self.activation()?;
        if self.use_bidirectional_attention == Some(true) {
            return Err(ConfigError::unsupported("use_bidirectional_attention", true, "causal attention is"));
        }
        for (key, cap) in [
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if let Some(cap) = cap.filter(|c| c.is_nan() || *c <= 0.0) {
                return Err(ConfigError::invalid(key, cap, "must be above 0 (or null for none)"));
            }
        }
        for (key, heads) in
            [("num_attention_heads", self.num_attention_heads), ("num_key_value_heads", self.kv_heads())]
        {
            if heads < 1 {
                return Err(ConfigError::invalid(key, heads, "must be at least 1"));
            }
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            let rule = format!("is not a multiple of num_key_value_heads ({})", self.kv_heads());
            return Err(ConfigError::invalid("num_attention_heads", format!("({})", self.num_attention_heads), rule));
        }
        if self.pretraining_tp.is_some_and(|tp| tp > 1) {
            return Err(ConfigError::unsupported("pretraining_tp", self.pretraining_tp.unwrap_or(1), "1 is"));
        }
        if let Some(window) = self.sliding_window.filter(|w| *w < 1) {
            return Err(ConfigError::invalid("sliding_window", window, "must be at least 1 (or null for none)"));
        }
        Ok(())
    }
}

/// The run's max_seq_length past a learned position table of `size` rows (config.json's `key`).
fn beyond_positions(max_seq_length: i64, key: &str, size: i64) -> ConfigError {
    ConfigError::invalid("max_seq_length", max_seq_length, format!("is beyond {key} {size}"))
}

#[derive(Debug, Clone, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "gpt2_positions")]
    pub n_positions: i64,
    #[serde(default = "gpt2_width")]
    pub n_embd: i64,
    #[serde(default = "gpt2_layers")]
    pub n_layer: i64,
    #[serde(default = "gpt2_layers")]
    pub n_head: i64,
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "gelu_new")]
    pub activation_function: String,
    #[serde(default = "dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "dropout")]
    pub attn_pdrop: f64,
    #[serde(default = "gpt2_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn gpt2_positions() -> i64 {
    1024
}
fn gpt2_width() -> i64 {
    768
}
fn gpt2_layers() -> i64 {
    12
}
fn gelu_new() -> String {
    "gelu_new".to_owned()
}
fn dropout() -> f64 {
    0.1
}
fn gpt2_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl Gpt2Config {
    pub fn activation(&self) -> Result<Activation, ConfigError> {
        activation("activation_function", &self.activation_function)
    }

    pub fn check(&self, max_seq_length: i64) -> Result<(), ConfigError> {
        self.activation()?;
        if self.add_cross_attention {
            return Err(ConfigError::unsupported("add_cross_attention", true, "a decoder alone is"));
        }
        if !self.scale_attn_weights {
            return Err(ConfigError::unsupported("scale_attn_weights", false, "true is"));
        }
        if max_seq_length > self.n_positions {
            return Err(beyond_positions(max_seq_length, "n_positions", self.n_positions));
        }
        Ok(())
    }
}

/// OPT's config.json (transformers' OPTConfig defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct OptConfig {
    #[serde(default = "gpt2_width")]
    pub hidden_size: i64,
    #[serde(default = "bert_intermediate")]
    pub ffn_dim: i64,
    #[serde(default = "gpt2_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "gpt2_layers")]
    pub num_attention_heads: i64,
    #[serde(default = "llama_positions")]
    pub max_position_embeddings: i64,
    /// Pre-norm layers (125m, 1.3b and up) or post-norm (350m).
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// The embeddings' width; where it is not hidden_size, project_in and project_out
    /// map between the two (350m).
    #[serde(default)]
    pub word_embed_proj_dim: Option<i64>,
    #[serde(default = "dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "relu")]
    pub activation_function: String,
    #[serde(default)]
    pub layerdrop: f64,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn relu() -> String {
    "relu".to_owned()
}

impl OptConfig {
    pub fn activation(&self) -> Result<Activation, ConfigError> {
        activation("activation_function", &self.activation_function)
    }

    pub fn embedding_width(&self) -> i64 {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// Whether the decoder ends with a LayerNorm (pre-norm models do).
    pub fn final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }

    pub fn check(&self, max_seq_length: i64) -> Result<(), ConfigError> {
        self.activation()?;
        if self.layerdrop > 0.0 {
            return Err(ConfigError::unsupported("layerdrop", self.layerdrop, "0 is"));
        }
        if !self.layer_norm_elementwise_affine {
            return Err(ConfigError::unsupported("layer_norm_elementwise_affine", false, "true is"));
        }
        if self.num_attention_heads < 1 || self.hidden_size % self.num_attention_heads != 0 {
            let rule = format!("is not a multiple of num_attention_heads ({})", self.num_attention_heads);
            return Err(ConfigError::invalid("hidden_size", format!("({})", self.hidden_size), rule));
        }
        if max_seq_length > self.max_position_embeddings {
            return Err(beyond_positions(max_seq_length, "max_position_embeddings", self.max_position_embeddings));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    #[serde(default = "gpt2_width")]
    pub hidden_size: i64,
    #[serde(default = "gpt2_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "gpt2_layers")]
    pub num_attention_heads: i64,
    #[serde(default = "bert_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "bert_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "type_vocab_size")]
    pub type_vocab_size: i64,
    #[serde(default = "bert_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub is_decoder: bool,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn bert_intermediate() -> i64 {
    3072
}
fn gelu() -> String {
    "gelu".to_owned()
}
fn bert_positions() -> i64 {
    512
}
fn type_vocab_size() -> i64 {
    2
}
fn bert_eps() -> f64 {
    1e-12
}

impl EncoderConfig {
    pub fn activation(&self) -> Result<Activation, ConfigError> {
        activation("hidden_act", &self.hidden_act)
    }

    pub fn check(&self, roberta: bool, padding_idx: i64, max_seq_length: i64) -> Result<(), ConfigError> {
        self.activation()?;
        if self.is_decoder {
            return Err(ConfigError::unsupported("is_decoder", true, "an encoder is"));
        }
        if let Some(kind) = self.position_embedding_type.as_deref().filter(|k| *k != "absolute") {
            return Err(ConfigError::unsupported("position_embedding_type", format!("'{kind}'"), "absolute is"));
        }
        // RoBERTa's positions start after the padding index.
        let positions =
            if roberta { self.max_position_embeddings - padding_idx - 1 } else { self.max_position_embeddings };
        if max_seq_length > positions {
            return Err(ConfigError::invalid(
                "max_seq_length",
                max_seq_length,
                format!("is beyond the model's {positions} positions"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(extra: &str) -> DecoderConfig {
        let text = format!(
            r#"{{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4{extra}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn rope_settings_read_both_config_formats() {
        assert_eq!(decoder("").rope().unwrap(), Rope { theta: 10_000.0, scaling: RopeScaling::None });
        assert_eq!(decoder(r#", "rope_theta": 500000.0"#).rope().unwrap().theta, 500_000.0);
        let v5 = decoder(r#", "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}"#);
        assert_eq!(v5.rope().unwrap().theta, 1_000_000.0);
        let llama3 = decoder(
            r#", "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#,
        );
        assert!(matches!(llama3.rope().unwrap().scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        let yarn = decoder(r#", "rope_scaling": {"type": "yarn", "factor": 4.0}"#).rope().unwrap_err().to_string();
        assert_eq!(
            yarn,
            "rope_scaling.rope_type 'yarn' is not supported (this host implements default, linear, llama3 and longrope)"
        );
    }

    #[test]
    fn features_not_implemented_are_named() {
        let window = decoder(r#", "sliding_window": 0"#).check().unwrap_err();
        assert_eq!(window, ConfigError::invalid("sliding_window", 0, "must be at least 1 (or null for none)"));
        assert_eq!(window.to_string(), "sliding_window 0 must be at least 1 (or null for none)");
        assert!(decoder(r#", "sliding_window": 16"#).check().is_ok());
        let act = decoder(r#", "hidden_act": "swish2""#).check().unwrap_err().to_string();
        assert!(act.starts_with("hidden_act 'swish2' is not supported (silu, swish, relu"), "{act}");
    }

    #[test]
    fn head_counts_below_one_are_named_not_divided_by() {
        let kv = decoder(r#", "num_key_value_heads": 0"#).check().unwrap_err().to_string();
        assert_eq!(kv, "num_key_value_heads 0 must be at least 1");
        let text = r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 0}"#;
        let config: DecoderConfig = serde_json::from_str(text).unwrap();
        assert_eq!(config.check().unwrap_err().to_string(), "num_attention_heads 0 must be at least 1");
    }
}
