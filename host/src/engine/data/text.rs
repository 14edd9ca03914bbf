//! Text data: JSON Lines, one object per example (or a Parquet text column), tokenized
//! with a Hugging Face `tokenizer.json`.
//!
//! With a label key (label_column, else `label` or `labels`) each text is one example to
//! classify: `input_ids`, `attention_mask` and `labels` [N]. Without one the texts are
//! language-modelling data: `labels` [N, T] holds the next token at each position (already
//! shifted, -100 past the end), so the loss and a loss plugin compare `logits[:, t]` with
//! `labels[:, t]` directly. Texts are truncated to max_seq_length tokens and stored padded to
//! the longest (batches are cut to their own longest, see `Dataset`); the tokenizer adds its
//! special tokens (its post-processor).

use std::path::Path;

use tch::Tensor;
use tokenizers::Tokenizer;

use super::chat::TokenizerConfig;
use super::label_names::{self, RawLabel};
use super::packing;
use super::sft::{self, Format, Preparer};
use super::{Dataset, FileOptions, TokenRef, PACKED_POSITIONS};
use crate::error::InputError;

pub fn read_jsonl(path: &Path, options: &FileOptions) -> Result<Dataset, InputError> {
    let shown = path.display().to_string();
    let tokenizer = load_tokenizer(&shown, options)?;
    let text = std::fs::read_to_string(path).map_err(|e| InputError::new(format!("cannot read {shown}: {e}")))?;
    let first = text.lines().find(|l| !l.trim().is_empty()).and_then(|l| serde_json::from_str(l).ok());
    if let Some(format) = first.as_ref().and_then(Format::of) {
        return read_sft(&shown, &text, format, &tokenizer, options);
    }
    let mut texts: Vec<String> = Vec::new();
    let mut labels: Vec<RawLabel> = Vec::new();
    let mut label_key: Option<String> = None;
    for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |why: String| InputError::new(format!("{shown} line {}: {why}", index + 1));
        let row: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON ({e})")))?;
        let text = row
            .get(&options.text_column)
            .ok_or_else(|| at(format!("no '{}' key (text_column)", options.text_column)))?
            .as_str()
            .ok_or_else(|| at(format!("'{}' is not a string", options.text_column)))?;
        if texts.is_empty() {
            label_key = match &options.label_column {
                Some(key) => Some(key.clone()),
                None => {
                    let keys =
                        row.as_object().map(|o| o.keys().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default();
                    super::default_label(keys.iter().copied()).map(|i| keys[i].to_owned())
                }
            };
        }
        if let Some(key) = &label_key {
            let label = row.get(key).ok_or_else(|| at(format!("no '{key}' key (the label)")))?;
            labels.push(match label {
                serde_json::Value::String(name) => RawLabel::Name(name.clone()),
                other => RawLabel::Id(
                    other.as_i64().ok_or_else(|| at(format!("label {other} is not a whole number or a class name")))?,
                ),
            });
        }
        texts.push(text.to_owned());
    }
    let lines = |row: usize| format!("line {}", row + 1);
    let (labels, names) = match label_key {
        Some(_) => {
            let (ids, names) = label_names::encode(labels, &shown, lines)?;
            (Some(ids), names)
        }
        None => (None, None),
    };
    let mut dataset = from_texts(&shown, &tokenizer, &texts, labels, options, lines)?;
    dataset.label_names = names;
    Ok(dataset)
}

/// TRL's conversational or prompt-completion rows (sft.rs), as language-modelling data.
fn read_sft(
    shown: &str,
    text: &str,
    format: Format,
    tokenizer: &Tokenizer,
    options: &FileOptions,
) -> Result<Dataset, InputError> {
    let config = match &options.tokenizer_file {
        Some(file) => TokenizerConfig::read(Path::new(file))?,
        None => TokenizerConfig::default(),
    };
    if options.assistant_only_loss {
        if format == Format::PromptCompletion && first_is_text(text) {
            return Err(InputError::new(format!(
                "{shown}: assistant_only_loss needs chat data (messages); prompt-completion text learns the completion with completion_only_loss"
            )));
        }
        if let Some(template) = config.template.as_ref().filter(|t| !t.marks_generation) {
            return Err(InputError::new(format!(
                "assistant_only_loss needs a chat template that marks the assistant's tokens with {{% generation %}} ... {{% endgeneration %}}, and {} has none; add them around the assistant's content, or set assistant_only_loss false",
                template.origin.display()
            )));
        }
    }
    let preparer = Preparer { tokenizer, config: &config, options, source: shown };
    let mut examples = Vec::new();
    for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |why: String| InputError::new(format!("{shown} line {}: {why}", index + 1));
        examples.push(preparer.example(format, line, &at)?);
    }
    let (total, limit) = (examples.len(), options.sft_max_seq_length);
    let (cut, dropped) = sft::truncate_and_drop(&mut examples, limit.max(1) as usize);
    if cut > 0 {
        tracing::info!("{shown}: {cut} of {total} examples cut to max_seq_length {} tokens", limit);
    }
    if dropped > 0 {
        tracing::warn!("{shown}: {dropped} examples dropped: nothing left to learn within max_seq_length {}", limit);
    }
    if examples.is_empty() {
        return Err(InputError::new(format!(
            "{shown}: no example has a token to learn within max_seq_length {}; raise max_seq_length",
            limit
        )));
    }
    let targets = examples.iter().map(sft::next_token_targets).collect();
    let sequences = examples.into_iter().map(|e| e.ids).collect();
    let (sequences, targets, positions) = maybe_pack(shown, sequences, targets, limit, options);
    token_dataset(shown, tokenizer, sequences, targets, positions, options)
}

/// Token rows, what they learn, and packed rows' positions.
type Rows = (Vec<Vec<i64>>, Targets, Option<Vec<Vec<i64>>>);

/// With packing, language-modelling sequences and their next-token targets as packed rows
/// of max_seq_length tokens with their positions; else as they are.
fn maybe_pack(
    source: &str,
    sequences: Vec<Vec<i64>>,
    targets: Vec<Vec<i64>>,
    limit: i64,
    options: &FileOptions,
) -> Rows {
    if !options.packing {
        return (sequences, Targets::NextTokens(targets), None);
    }
    let examples = sequences.len();
    let packed = packing::pack(&sequences, &targets, limit.max(1) as usize);
    tracing::info!("{source}: {examples} examples packed into {} rows of at most {} tokens", packed.ids.len(), limit);
    (packed.ids, Targets::NextTokens(packed.targets), Some(packed.positions))
}

/// Whether the first row's prompt is text (not a list of messages).
fn first_is_text(text: &str) -> bool {
    let first = text.lines().find(|l| !l.trim().is_empty());
    first.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()).is_some_and(|row| row["prompt"].is_string())
}

/// Reads `tokenizer_file`.
pub fn load_tokenizer(source: &str, options: &FileOptions) -> Result<Tokenizer, InputError> {
    let tokenizer_file = options.tokenizer_file.as_deref().ok_or_else(|| {
        InputError::new(format!("{source}: text data needs tokenizer_file (a Hugging Face tokenizer.json)"))
    })?;
    if !Path::new(tokenizer_file).is_file() {
        let found = crate::error::what_is_at(Path::new(tokenizer_file));
        return Err(InputError::new(format!("tokenizer_file {tokenizer_file} {found}; give a tokenizer.json file")));
    }
    Tokenizer::from_file(tokenizer_file)
        .map_err(|e| InputError::new(format!("tokenizer_file {tokenizer_file}: not a readable tokenizer.json ({e})")))
}

/// Tokenizes texts into `input_ids`, `attention_mask` and `labels`: the class labels when
/// given, else the next tokens (language modelling). `place` names a text's row in errors.
pub fn from_texts(
    source: &str,
    tokenizer: &Tokenizer,
    texts: &[String],
    labels: Option<Vec<i64>>,
    options: &FileOptions,
    place: impl Fn(usize) -> String,
) -> Result<Dataset, InputError> {
    let mut sequences: Vec<Vec<i64>> = Vec::with_capacity(texts.len());
    let limit = options.max_seq_length.max(1) as usize;
    let mut cut = 0;
    for (row, text) in texts.iter().enumerate() {
        let at = |why: &str| InputError::new(format!("{source} {}: {why}", place(row)));
        let encoding = tokenizer.encode(text.as_str(), true).map_err(|e| at(&format!("cannot tokenize ({e})")))?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&id| id as i64).collect();
        if ids.len() > limit {
            ids.truncate(limit);
            cut += 1;
        }
        if ids.is_empty() {
            return Err(at("the text gives no tokens"));
        }
        sequences.push(ids);
    }
    if sequences.is_empty() {
        return Err(InputError::new(format!("{source}: no examples")));
    }
    if cut > 0 {
        tracing::info!(
            "{source}: {cut} of {} texts cut to max_seq_length {} tokens",
            texts.len(),
            options.max_seq_length
        );
    }
    // A classifier's texts without labels are texts to classify (to predict), not text
    // to model: a language-modelling reading would "predict" next tokens.
    let labels = match (labels, &options.classifier) {
        (None, Some(class)) => {
            tracing::info!(
                "{source}: no labels; {} texts to classify with {class} (labels -100: nothing to train or score on)",
                sequences.len()
            );
            Some(vec![-100; sequences.len()])
        }
        (labels, _) => labels,
    };
    if labels.is_none() && sequences.iter().all(|s| s.len() < 2) {
        // Language modelling learns each next token: a one-token text has none.
        return Err(InputError::new(format!(
            "{source}: no token is left to predict: every text is at most one token long (max_seq_length {}); a causal language model learns the next token, so give longer texts or raise max_seq_length",
            options.max_seq_length
        )));
    }
    let (sequences, targets, positions) = match labels {
        Some(_) if options.packing => {
            return Err(InputError::new(format!(
                "{source}: packing is for language-modelling data, and these texts have labels to classify; set packing false"
            )));
        }
        Some(labels) => (sequences, Targets::Classes(labels), None),
        // Language modelling: the label at each position is the next token.
        None => {
            let next = sequences.iter().map(|s| s[1..].to_vec()).collect();
            maybe_pack(source, sequences, next, options.max_seq_length, options)
        }
    };
    token_dataset(source, tokenizer, sequences, targets, positions, options)
}

/// What a token dataset learns.
enum Targets {
    /// A class per sequence.
    Classes(Vec<i64>),
    /// A target per position but the last (the next token, or -100 where it is not
    /// learned); -100 past the end.
    NextTokens(Vec<Vec<i64>>),
}

/// `input_ids` and `attention_mask` padded to the longest sequence, and the labels; packed
/// rows also their `position_ids`.
fn token_dataset(
    source: &str,
    tokenizer: &Tokenizer,
    sequences: Vec<Vec<i64>>,
    targets: Targets,
    positions: Option<Vec<Vec<i64>>>,
    options: &FileOptions,
) -> Result<Dataset, InputError> {
    let pad = pad_id(tokenizer, &options.pad_candidates);
    let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
    let (n, t) = (sequences.len() as i64, longest as i64);
    let (ids, mask) = super::pad_rows(&sequences, pad, longest);
    let labels = match targets {
        Targets::Classes(labels) => Tensor::from_slice(&labels),
        Targets::NextTokens(next) => Tensor::from_slice(&super::pad_rows(&next, -100, longest).0).view([n, t]),
    };
    let mut fields = vec![
        ("input_ids".to_owned(), Tensor::from_slice(&ids).view([n, t])),
        ("attention_mask".to_owned(), Tensor::from_slice(&mask).view([n, t])),
        ("labels".to_owned(), labels),
    ];
    if let Some(positions) = positions {
        let positions = super::pad_rows(&positions, 0, longest).0;
        fields.push((PACKED_POSITIONS.to_owned(), Tensor::from_slice(&positions).view([n, t])));
    }
    let mut dataset = Dataset::new(source, fields)?;
    dataset.vocab_size = Some(tokenizer.get_vocab_size(true) as i64);
    dataset.end_token = end_id(tokenizer);
    dataset.pad_token = Some(pad);
    if let Some(separator) = &options.generation_separator {
        let id = tokenizer.token_to_id(separator).ok_or_else(|| {
            InputError::new(format!(
                "generation_separator '{separator}' is not a token of {}; give one token of its vocabulary",
                options.tokenizer_file.as_deref().unwrap_or("the tokenizer")
            ))
        })?;
        dataset.separator_token = Some(id as i64);
    }
    Ok(dataset)
}

/// The padding token: the first of `candidates` the tokenizer knows (a pretrained model's
/// pad or end-of-text token), the tokenizer's padding setting, else a conventional pad
/// token, else 0 (padding is masked and never a label, so its id does not matter).
fn pad_id(tokenizer: &Tokenizer, candidates: &[TokenRef]) -> i64 {
    let vocab = tokenizer.get_vocab_size(true) as i64;
    let known = candidates.iter().find_map(|candidate| match candidate {
        TokenRef::Text(text) => tokenizer.token_to_id(text).map(i64::from),
        TokenRef::Id(id) => Some(*id).filter(|id| (0..vocab).contains(id)),
    });
    if let Some(id) = known {
        return id;
    }
    if let Some(padding) = tokenizer.get_padding() {
        return padding.pad_id as i64;
    }
    ["[PAD]", "<pad>", "<|pad|>", "<|endoftext|>"]
        .iter()
        .find_map(|token| tokenizer.token_to_id(token))
        .map_or(0, |id| id as i64)
}

/// The token that ends a text, for generation to stop at.
fn end_id(tokenizer: &Tokenizer) -> Option<i64> {
    super::chat::end_token(tokenizer).and_then(|token| tokenizer.token_to_id(token)).map(i64::from)
}
