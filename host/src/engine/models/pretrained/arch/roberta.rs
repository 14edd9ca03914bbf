//! RoBERTa: BERT's encoder with positions counted from the padding index + 1, one token
//! type, and a two-layer classification head (`classifier.dense`, `classifier.out_proj`).

use super::encoders::{self, EncoderKind};
use super::Registration;

pub const REGISTRATION: Registration =
    Registration { model_type: "roberta", causal_lm: false, parse: |text| encoders::parse(text, &ROBERTA) };

static ROBERTA: EncoderKind = EncoderKind {
    model_type: "roberta",
    class_stem: "Roberta",
    classifier_weight: "classifier.out_proj.weight",
    embedding_weight: "roberta.embeddings.word_embeddings.weight",
    roberta: true,
};
