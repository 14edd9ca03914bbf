//! BERT: a post-norm encoder with absolute positions and token types; the classifier reads
//! the pooled first token (`BertForSequenceClassification`).

use super::encoders::{self, EncoderKind};
use super::Registration;

pub const REGISTRATION: Registration =
    Registration { model_type: "bert", causal_lm: false, parse: |text| encoders::parse(text, &BERT) };

static BERT: EncoderKind = EncoderKind {
    model_type: "bert",
    class_stem: "Bert",
    classifier_weight: "classifier.weight",
    embedding_weight: "bert.embeddings.word_embeddings.weight",
    roberta: false,
};
