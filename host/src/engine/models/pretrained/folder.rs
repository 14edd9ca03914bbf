//! A local Hugging Face model folder: config.json, the weights, and the tokenizer's files.
//! Nothing is downloaded: a hub id that is not a folder here is an error saying how to
//! download it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::arch::{self, Architecture};
use super::config::Common;
use crate::engine::data::TokenRef;
use crate::error::InputError;

/// The argument that names the folder, in errors.
pub const ARGUMENT: &str = "model_name_or_path";

/// The tokenizer's files and the others a saved model folder carries along, copied as
/// they are (transformers' tokenizer and generation files).
pub const COMPANION_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

/// A model folder, its config.json read.
#[derive(Debug, Clone)]
pub struct Folder {
    pub dir: PathBuf,
    /// config.json as it is, which a saved folder's config.json starts from.
    pub raw_config: Value,
    pub common: Common,
    /// The architecture config.json names, its settings read.
    pub arch: Arc<dyn Architecture>,
    /// tokenizer_config.json, if the folder has one.
    tokenizer_config: Option<Value>,
}

impl Folder {
    /// The longest sequence the model places: its position table, or its RoPE context.
    pub fn context_length(&self) -> i64 {
        self.arch.positions(&self.common).max_length()
    }

    /// The length of its learned position table, past which it cannot place a token
    /// (rotary positions go on).
    pub fn position_table(&self) -> Option<i64> {
        match self.arch.positions(&self.common) {
            arch::Positions::Learned(n) => Some(n),
            arch::Positions::Rotary(_) => None,
        }
    }

    /// The sequence-classifier class config.json's architectures name, if any.
    pub fn classifier_class(&self) -> Option<String> {
        let architectures = self.common.architectures.iter().flatten();
        architectures.into_iter().find(|a| a.ends_with("ForSequenceClassification")).cloned()
    }

    /// Opens `spec`, a folder; a hub id is refused with the command that downloads it.
    pub fn open(spec: &str) -> Result<Self, InputError> {
        let dir = Path::new(spec);
        if !dir.exists() {
            if looks_like_hub_id(spec) {
                let name = spec.rsplit('/').next().unwrap_or(spec);
                return Err(InputError::new(format!(
                    "{ARGUMENT} '{spec}' is not a local folder, and this host does not download models: download it first (hf download {spec} --local-dir models/{name}) and pass --model-name-or-path models/{name}"
                )));
            }
            return Err(InputError::new(format!("{ARGUMENT} {spec} does not exist")));
        }
        if !dir.is_dir() {
            return Err(InputError::new(format!(
                "{ARGUMENT} {spec} is a file; give the model's folder (with config.json and model.safetensors)"
            )));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(InputError::new(format!(
                "{ARGUMENT} {spec} has no config.json: it is not a Hugging Face model folder (config.json, model.safetensors, tokenizer.json)"
            )));
        }
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| InputError::new(format!("cannot read {}: {e}", config_path.display())))?;
        let (common, arch) = arch::parse(&text).map_err(|e| InputError::new(format!("{ARGUMENT} {spec}: {e}")))?;
        let raw_config = serde_json::from_str(&text).unwrap_or(Value::Null);
        let tokenizer_config = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            Err(_) => None,
            Ok(text) => Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                InputError::new(format!(
                    "{ARGUMENT} {spec}: tokenizer_config.json is not valid JSON ({e}); fix it or remove it (the tokenizer's pad token and padding side are read from it)"
                ))
            })?),
        };
        Ok(Self { dir: dir.to_path_buf(), raw_config, common, arch: Arc::from(arch), tokenizer_config })
    }

    /// The folder's tokenizer.json (which text data is read with unless tokenizer_file
    /// names another).
    pub fn tokenizer_file(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    /// The padding token, in the order transformers users settle it: the tokenizer's
    /// pad_token, config.json's pad_token_id, else the end-of-text token (the usual
    /// `tokenizer.pad_token = tokenizer.eos_token` for models without one).
    pub fn pad_candidates(&self) -> Vec<TokenRef> {
        let token =
            |key: &str| crate::engine::data::token_text(self.tokenizer_config.as_ref()?.get(key)?).map(TokenRef::Text);
        [
            token("pad_token"),
            self.common.pad_token_id.map(TokenRef::Id),
            token("eos_token"),
            self.common.eos_token_id.map(TokenRef::Id),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The tokenizer's padding side ("right" unless tokenizer_config.json says "left").
    pub fn padding_side(&self) -> &str {
        self.tokenizer_config.as_ref().and_then(|c| c.get("padding_side")).and_then(Value::as_str).unwrap_or("right")
    }

    /// The model_type, as config.json names it.
    pub fn model_type(&self) -> &str {
        &self.common.model_type
    }
}

/// `org/name` (or a bare `name`) as the Hugging Face hub spells model ids.
fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    let valid = |p: &&str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (1..=2).contains(&parts.len()) && parts.iter().all(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_apart_from_missing_paths() {
        assert!(looks_like_hub_id("meta-llama/Llama-3.2-1B"));
        assert!(looks_like_hub_id("gpt2"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        let error = Folder::open("Qwen/Qwen2.5-0.5B").unwrap_err().to_string();
        assert_eq!(
            error,
            "model_name_or_path 'Qwen/Qwen2.5-0.5B' is not a local folder, and this host does not download models: download it first (hf download Qwen/Qwen2.5-0.5B --local-dir models/Qwen2.5-0.5B) and pass --model-name-or-path models/Qwen2.5-0.5B"
        );
        assert_eq!(
            Folder::open("/no/such/dir").unwrap_err().to_string(),
            "model_name_or_path /no/such/dir does not exist"
        );
    }
}
