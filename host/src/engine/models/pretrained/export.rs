//! What makes a saved model folder load in transformers: config.json naming the head's
//! class, its labels, dtype and pad token, and the tokenizer's and generation files of
//! the folder the model came from.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;
use tch::Kind;

use super::folder::{Folder, COMPANION_FILES};
use super::lora::{AdapterConfig, ADAPTER_CONFIG};
use super::Head;
use crate::engine::weights::FileSink;

/// The files a saved model folder has besides its weights.
#[derive(Debug, Clone)]
pub struct Export {
    /// config.json, ready to write.
    config: Value,
    /// The folder whose tokenizer and generation files are copied.
    source: PathBuf,
    /// A LoRA run saves its adapter (adapter_config.json) rather than the model.
    adapter: Option<AdapterConfig>,
}

/// The name transformers gives a dtype in config.json.
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

impl Export {
    /// config.json for the trained model: the folder's, with the head's class, labels
    /// (`labels`: their names, LABEL_i where none are known), the parameters' dtype and,
    /// for a classifier, the pad token its last-token rule uses.
    pub fn new(folder: &Folder, head: &Head, kind: Kind, labels: Option<&[String]>) -> Self {
        let mut config = folder.raw_config.clone();
        if let Some(map) = config.as_object_mut() {
            map.insert("architectures".into(), serde_json::json!([folder.arch.class_name(head)]));
            map.remove("torch_dtype");
            map.insert("dtype".into(), dtype_name(kind).into());
            if let Head::SequenceClassification { num_labels, pad } = head {
                let names: Vec<String> = match labels {
                    Some(names) if names.len() as i64 == *num_labels => names.to_vec(),
                    _ => (0..*num_labels).map(|i| format!("LABEL_{i}")).collect(),
                };
                let id2label: serde_json::Map<String, Value> =
                    names.iter().enumerate().map(|(i, n)| (i.to_string(), n.clone().into())).collect();
                let label2id: serde_json::Map<String, Value> =
                    names.iter().enumerate().map(|(i, n)| (n.clone(), i.into())).collect();
                map.insert("id2label".into(), id2label.into());
                map.insert("label2id".into(), label2id.into());
                map.remove("num_labels");
                if let (Some(pad), Value::Null | Value::Bool(_)) =
                    (pad, map.get("pad_token_id").unwrap_or(&Value::Null))
                {
                    map.insert("pad_token_id".into(), (*pad).into());
                }
            }
        }
        Self { config, source: folder.dir.clone(), adapter: None }
    }

    pub fn with_adapter(mut self, adapter: Option<AdapterConfig>) -> Self {
        self.adapter = adapter;
        self
    }

    /// A LoRA run's adapter config.
    pub fn adapter(&self) -> Option<&AdapterConfig> {
        self.adapter.as_ref()
    }

    /// Writes config.json (adapter_config.json for a LoRA run, as PEFT's save_pretrained)
    /// and copies the companion files the source folder has.
    pub fn write(&self, sink: &mut dyn FileSink) -> Result<Vec<String>> {
        match &self.adapter {
            Some(adapter) => self.write_with(sink, ADAPTER_CONFIG, &serde_json::to_value(adapter)?),
            None => self.write_with(sink, "config.json", &self.config),
        }
    }

    /// Writes config.json of the whole model (a merged LoRA run too) and the companions.
    pub fn write_full(&self, sink: &mut dyn FileSink) -> Result<Vec<String>> {
        self.write_with(sink, "config.json", &self.config)
    }

    fn write_with(&self, sink: &mut dyn FileSink, name: &str, config: &Value) -> Result<Vec<String>> {
        let text = serde_json::to_string_pretty(config)? + "\n";
        sink.write_file(name, &mut |path| Ok(std::fs::write(path, &text)?))?;
        let mut written = vec![name.to_owned()];
        for name in COMPANION_FILES {
            let from = self.source.join(name);
            if from.is_file() {
                sink.write_file(name, &mut |path| {
                    std::fs::copy(&from, path).map(|_| ()).with_context(|| format!("cannot copy {}", from.display()))
                })?;
                written.push((*name).to_owned());
            }
        }
        Ok(written)
    }
}
