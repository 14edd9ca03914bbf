//! GPT-2: learned positions, `Conv1D` projections (PEFT stores their adapters
//! fan_in_fan_out), LayerNorms named `ln_*`; `GPT2LMHeadModel` or a last-token classifier.

use super::{Architecture, Build, Network, Positions, Registration};
use crate::engine::activations::TransformerShape;
use crate::engine::models::pretrained::config::{Common, ConfigError, Gpt2Config};
use crate::engine::models::pretrained::gpt2::Gpt2;
use crate::engine::models::pretrained::Head;

pub const REGISTRATION: Registration = Registration {
    model_type: "gpt2",
    causal_lm: true,
    parse: |text| Ok(Box::new(Gpt2Arch(serde_json::from_str(text)?))),
};

#[derive(Debug)]
struct Gpt2Arch(Gpt2Config);

impl Architecture for Gpt2Arch {
    fn model_type(&self) -> &'static str {
        "gpt2"
    }

    fn class_name(&self, head: &Head) -> String {
        match head {
            Head::CausalLm => "GPT2LMHeadModel".to_owned(),
            Head::SequenceClassification { .. } => "GPT2ForSequenceClassification".to_owned(),
        }
    }

    fn weight_prefix(&self) -> &'static str {
        "transformer"
    }

    fn classifier_weight(&self) -> &'static str {
        "score.weight"
    }

    fn embedding_weight(&self) -> &'static str {
        "transformer.wte.weight"
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["c_attn"]
    }

    fn fan_in_fan_out(&self) -> bool {
        true
    }

    fn positions(&self, _: &Common) -> Positions {
        Positions::Learned(self.0.n_positions)
    }

    fn embedding_weights(&self) -> &'static [&'static str] {
        &["wte.weight", "wpe.weight"]
    }

    fn layer_norm_modules(&self) -> &'static [&'static str] {
        &["ln_1", "ln_2", "ln_f"]
    }

    fn transformer_shape(&self) -> TransformerShape {
        TransformerShape { layers: self.0.n_layer, width: self.0.n_embd, heads: self.0.n_head }
    }

    fn check(&self, _: &Common, max_seq_length: i64) -> Result<(), ConfigError> {
        self.0.check(max_seq_length)
    }

    fn build(&self, b: &Build) -> Result<Box<dyn Network>, ConfigError> {
        Ok(Box::new(Gpt2::new(b.src, b.root, b.common, &self.0, b.head, b.checkpointing)?))
    }
}
