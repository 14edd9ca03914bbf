//! OPT: learned positions counted from the attention mask with an offset of 2, biased
//! projections, ReLU MLP (fc1, fc2), LayerNorms before (most sizes) or after (350m) each
//! sublayer, and project_in/project_out where the embeddings are narrower than the layers.

use super::{head_class, Architecture, Build, Network, Positions, Registration};
use crate::engine::activations::TransformerShape;
use crate::engine::models::pretrained::config::{Common, ConfigError, OptConfig};
use crate::engine::models::pretrained::opt::Opt;
use crate::engine::models::pretrained::Head;

pub const REGISTRATION: Registration = Registration {
    model_type: "opt",
    causal_lm: true,
    parse: |text| Ok(Box::new(OptArch(serde_json::from_str(text)?))),
};

#[derive(Debug)]
struct OptArch(OptConfig);

impl Architecture for OptArch {
    fn model_type(&self) -> &'static str {
        "opt"
    }

    fn class_name(&self, head: &Head) -> String {
        head_class("OPT", head)
    }

    fn weight_prefix(&self) -> &'static str {
        "model"
    }

    fn classifier_weight(&self) -> &'static str {
        "score.weight"
    }

    fn embedding_weight(&self) -> &'static str {
        "model.decoder.embed_tokens.weight"
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn positions(&self, _: &Common) -> Positions {
        Positions::Learned(self.0.max_position_embeddings)
    }

    fn embedding_weights(&self) -> &'static [&'static str] {
        &["embed_tokens.weight", "embed_positions.weight"]
    }

    fn layer_norm_modules(&self) -> &'static [&'static str] {
        &["self_attn_layer_norm", "final_layer_norm"]
    }

    fn transformer_shape(&self) -> TransformerShape {
        let c = &self.0;
        TransformerShape { layers: c.num_hidden_layers, width: c.hidden_size, heads: c.num_attention_heads }
    }

    fn check(&self, _: &Common, max_seq_length: i64) -> Result<(), ConfigError> {
        self.0.check(max_seq_length)
    }

    fn build(&self, b: &Build) -> Result<Box<dyn Network>, ConfigError> {
        Ok(Box::new(Opt::new(b.src, b.root, b.common, &self.0, b.head, b.checkpointing)?))
    }
}
