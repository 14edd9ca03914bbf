//! Pretrained Hugging Face models: a local folder (config.json, safetensors weights,
//! tokenizer) read into ports of transformers' architectures, with the head the data
//! asks for, and written back as a folder `from_pretrained` loads.
//!
//! The data decides the head, as a fine-tuning script would choose its AutoModel class:
//! one label per text is sequence classification, next-token labels are causal language
//! modelling. Parameter names are transformers' own, so weights, checkpoints, callbacks
//! and weight-decay rules see what PyTorch users see.

pub mod arch;
pub mod checkpointing;
pub mod config;
mod decoder;
mod encoder;
mod export;
pub mod folder;
mod gpt2;
mod layers;
pub mod lora;
mod opt;
mod params;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::Result;
use tch::{nn, Kind, Tensor};

use super::{Decoding, Model, Outputs, Sizes, Task};
use crate::engine::data::{Batch, Dataset};
use crate::engine::weights::WeightFiles;
use crate::error::InputError;
use arch::{Inputs, KvCache, Network, Positions};
pub use export::Export;
use folder::{Folder, ARGUMENT};
use lora::{AdapterConfig, AdapterFolder, Injector, LoraSpec};

/// The head on the pretrained body.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    /// Next-token logits [B, T, vocab] (`ForCausalLM`, `GPT2LMHeadModel`).
    CausalLm,
    /// Class logits [B, labels] (`ForSequenceClassification`); decoders read the last
    /// token that is not `pad`.
    SequenceClassification { num_labels: i64, pad: Option<i64> },
}

/// The dtype of the parameters: the checkpoint's (`auto`, as transformers 5 loads), or
/// one named.
pub fn parse_dtype(name: &str) -> Result<Option<Kind>, InputError> {
    Ok(match name {
        "auto" => None,
        "float32" | "fp32" => Some(Kind::Float),
        "bfloat16" | "bf16" => Some(Kind::BFloat16),
        "float16" | "fp16" => Some(Kind::Half),
        other => {
            return Err(InputError::new(format!(
                "torch_dtype '{other}' is not one of: auto (config.json's), float32, bfloat16, float16"
            )))
        }
    })
}

/// The dtype config.json says the weights were saved in (float32 when it says none).
fn saved_kind(common: &config::Common) -> Kind {
    common.saved_dtype().and_then(|name| parse_dtype(name).ok().flatten()).unwrap_or(Kind::Float)
}

/// How a pretrained model is trained: in full or through LoRA adapters, with or
/// without gradient checkpointing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Training {
    /// LoRA settings (use_peft); an adapter folder's own settings replace them.
    pub lora: Option<LoraSpec>,
    pub gradient_checkpointing: bool,
}

/// A pretrained model ready to build: the folder, its weights' headers, the head.
pub struct Plan {
    folder: Folder,
    weights: WeightFiles,
    head: Head,
    kind: Kind,
    training: Training,
    /// An adapter folder the run starts from (model_name_or_path was one).
    adapter: Option<AdapterFolder>,
    /// Filled by `build`: the adapter's config for saving (LoRA runs).
    adapter_config: RefCell<Option<AdapterConfig>>,
    /// The classes' names where the training data names its labels (for id2label).
    label_names: Option<Vec<String>>,
}

/// Opens model_name_or_path: a model folder, or an adapter folder on top of its base
/// model's folder.
pub fn open_folder(spec: &str) -> Result<(Folder, Option<AdapterFolder>), InputError> {
    match AdapterFolder::open(Path::new(spec), ARGUMENT)? {
        Some(adapter) => {
            let base = Folder::open(&adapter.base.display().to_string())
                .map_err(|e| InputError::new(format!("{ARGUMENT} {spec} is an adapter; its base model: {e}")))?;
            Ok((base, Some(adapter)))
        }
        None => Ok((Folder::open(spec)?, None)),
    }
}

/// Checks the folder against the data and decides the head.
pub fn plan(
    dir: &Path,
    dtype: Option<Kind>,
    training: &Training,
    sizes: &Sizes,
    train: &Dataset,
    eval: &Dataset,
) -> Result<Plan, InputError> {
    let (folder, adapter) = open_folder(&dir.display().to_string())?;
    let mut training = training.clone();
    if let Some(adapter) = &adapter {
        let spec = &adapter.spec;
        tracing::info!(
            "{ARGUMENT} {} is a LoRA adapter (r {}, alpha {}) on {}: training it on; the lora_* arguments come from its {}",
            dir.display(),
            spec.r,
            spec.alpha,
            folder.dir.display(),
            lora::ADAPTER_CONFIG
        );
        training.lora = Some(spec.clone());
    }
    let dir = folder.dir.clone();
    let shown = dir.display();
    let refuse = |problem: config::ConfigError| InputError::new(format!("{ARGUMENT} {shown}: {problem}"));
    let common = &folder.common;
    folder.arch.check(common, sizes.max_seq_length).map_err(refuse)?;
    let weights = WeightFiles::open_folder(&dir, ARGUMENT)?;
    check_vocabulary(&folder, &weights)?;
    check_tokens(&folder, train, eval)?;
    let adapter_head = adapter.as_ref().map(adapter_head_rows).transpose()?.flatten();
    let head = choose_head(&folder, &weights, adapter_head, sizes, train, eval)?;
    let kind = dtype.unwrap_or_else(|| saved_kind(common));
    let label_names = train.label_names.clone().filter(|_| matches!(head, Head::SequenceClassification { .. }));
    Ok(Plan { folder, weights, head, kind, training, adapter, adapter_config: RefCell::new(None), label_names })
}

/// The labels of a classifier head an adapter carries (in its modules_to_save), if any.
fn adapter_head_rows(adapter: &AdapterFolder) -> Result<Option<i64>, InputError> {
    let files = WeightFiles::open(&[adapter.dir.join(lora::ADAPTER_WEIGHTS)])
        .map_err(|e| InputError::new(format!("{ARGUMENT} {}: {e}", adapter.dir.display())))?;
    let head = ["score.weight", "classifier.weight", "classifier.out_proj.weight"]
        .iter()
        .find_map(|name| files.shape(&lora::peft_name(name)));
    Ok(head.and_then(|shape| shape.first().copied()))
}

/// A causal language model to generate with (no data to decide the head).
pub fn plan_generation(dir: &Path, dtype: Option<Kind>) -> Result<Plan, InputError> {
    let (folder, adapter) = open_folder(&dir.display().to_string())?;
    if !folder.arch.causal_lm() {
        return Err(InputError::new(format!(
            "{} is a {} encoder: generation needs a causal language model ({})",
            dir.display(),
            folder.model_type(),
            arch::causal_language_models().join(", ")
        )));
    }
    folder.arch.check(&folder.common, 0).map_err(|e| InputError::new(format!("{}: {e}", dir.display())))?;
    let weights = WeightFiles::open_folder(&folder.dir, ARGUMENT)?;
    let kind = dtype.unwrap_or_else(|| saved_kind(&folder.common));
    // An adapter folder generates with its base model and its adapters.
    let training = Training { lora: adapter.as_ref().map(|a| a.spec.clone()), ..Training::default() };
    let adapter_config = RefCell::new(None);
    Ok(Plan { folder, weights, head: Head::CausalLm, kind, training, adapter, adapter_config, label_names: None })
}

/// The hidden states between the blocks ("embeddings", "layers.N") and the "logits" of the
/// model folder `dir` (float32, on the CPU, as saved: the head config.json's architectures
/// name) on token ids [B, T] with their attention mask: the host's side of the per-layer
/// golden tests against transformers.
pub fn trace_layers(dir: &Path, ids: &Tensor, mask: &Tensor) -> Result<Vec<(String, Tensor)>> {
    let folder = Folder::open(&dir.display().to_string())?;
    let weights = WeightFiles::open_folder(dir, ARGUMENT)?;
    let architectures = folder.common.architectures.iter().flatten();
    let classifier = architectures.clone().any(|a| a.ends_with("ForSequenceClassification"));
    let head = match classifier {
        false => Head::CausalLm,
        true => {
            let rows = saved_rows(&weights, folder.arch.classifier_weight()).map(|(_, rows)| rows);
            Head::SequenceClassification { num_labels: rows.unwrap_or(2), pad: folder.common.pad_token_id }
        }
    };
    let (training, adapter_config) = (Training::default(), RefCell::new(None));
    let plan =
        Plan { folder, weights, head, kind: Kind::Float, training, adapter: None, adapter_config, label_names: None };
    let vars = nn::VarStore::new(tch::Device::Cpu);
    let model = plan.build(&vars.root())?;
    let batch = Batch::from_plugin({
        let mut fields = plugin_api::Tensors::new();
        fields.insert("input_ids", ids.shallow_clone());
        fields.insert("attention_mask", mask.shallow_clone());
        fields.insert("labels", ids.shallow_clone());
        fields
    })
    .map_err(anyhow::Error::msg)?;
    let (outputs, mut recorded) = checkpointing::traced(|| tch::no_grad(|| model.forward(&batch, false)));
    recorded.push(("logits".to_owned(), outputs?.get_logits().shallow_clone()));
    Ok(recorded)
}

/// config.json's vocab_size must be the token embedding's rows (before the tokenizer is
/// compared with it).
fn check_vocabulary(folder: &Folder, weights: &WeightFiles) -> Result<(), InputError> {
    // A missing embedding is reported with the other missing weights.
    let Some((found, rows)) = saved_rows(weights, folder.arch.embedding_weight()) else { return Ok(()) };
    let vocab = folder.common.vocab_size;
    if rows == vocab {
        return Ok(());
    }
    Err(InputError::new(format!(
        "{ARGUMENT} {}: config.json's vocab_size {vocab} does not match the weights: {found} has {rows} rows; the folder's config.json and weights must come from the same model",
        folder.dir.display()
    )))
}

/// The rows of weight `name` (a head model's name) in the checkpoint, under that name or,
/// in a base model's checkpoint, without its first part; with the name found.
fn saved_rows<'n>(weights: &WeightFiles, name: &'n str) -> Option<(&'n str, i64)> {
    let base_name = name.split_once('.').map_or(name, |(_, rest)| rest);
    [name, base_name].into_iter().find_map(|n| Some((n, *weights.shape(n)?.first()?)))
}

/// Token ids must be rows of the model's embedding, and the tokenizer the model's.
fn check_tokens(folder: &Folder, train: &Dataset, eval: &Dataset) -> Result<(), InputError> {
    let vocab = folder.common.vocab_size;
    let shown = folder.dir.display();
    if let Some(tokenizer) = train.vocab_size.filter(|&v| v > vocab) {
        return Err(InputError::new(format!(
            "the tokenizer has {tokenizer} tokens, more than the vocab_size {vocab} of {ARGUMENT} {shown}: it is not this model's tokenizer (use the folder's tokenizer.json)"
        )));
    }
    for (set, data) in [("training", train), ("evaluation", eval)] {
        let Some(ids) = data.field("input_ids") else {
            return Err(InputError::new(format!(
                "{ARGUMENT} {shown}: the {set} data has no input_ids (fields: {}); give text (JSONL, CSV or Parquet with a text column) for the folder's tokenizer, or token ids",
                data.names().join(", ")
            )));
        };
        if ids.numel() == 0 {
            continue; // An evaluation set that nothing evaluates.
        }
        let smallest = ids.min().int64_value(&[]);
        if smallest < 0 {
            return Err(InputError::new(format!(
                "{set} token id {smallest} is negative: token ids are rows of the embedding (0 to {}); padding is masked with attention_mask, and -100 belongs in labels only",
                vocab - 1
            )));
        }
        let largest = ids.max().int64_value(&[]);
        if largest >= vocab {
            return Err(InputError::new(format!(
                "{set} token id {largest} is outside the vocab_size {vocab} of {ARGUMENT} {shown}: the data was tokenized for another model"
            )));
        }
    }
    Ok(())
}

/// The head: sequence classification for one label per example, causal language
/// modelling for next-token labels.
fn choose_head(
    folder: &Folder,
    weights: &WeightFiles,
    adapter_head: Option<i64>,
    sizes: &Sizes,
    train: &Dataset,
    eval: &Dataset,
) -> Result<Head, InputError> {
    let shown = folder.dir.display();
    let labels = train.labels();
    if labels.dim() >= 2 {
        if !folder.arch.causal_lm() {
            return Err(InputError::new(format!(
                "{ARGUMENT} {shown} is a {} encoder, which this host fine-tunes for sequence classification: give one label per text (label_column); causal language modelling needs a decoder ({})",
                folder.model_type(),
                arch::causal_language_models().join(", ")
            )));
        }
        return Ok(Head::CausalLm);
    }
    // A classifier head in the checkpoint fixes the number of labels, as config.json's
    // id2label does for a folder saved with one.
    // An adapter's trained head replaces the base model's.
    let head_rows = adapter_head.or_else(|| saved_rows(weights, folder.arch.classifier_weight()).map(|(_, rows)| rows));
    let saved_labels = head_rows.or_else(|| {
        let architectures = folder.common.architectures.iter().flatten();
        let classifier = architectures.clone().any(|a| a.ends_with("ForSequenceClassification"));
        classifier.then(|| folder.common.labels()).flatten()
    });
    let num_labels = match (sizes.num_labels, head_rows) {
        (Some(asked), Some(saved)) if asked != saved => {
            return Err(InputError::new(format!(
                "num_labels {asked} does not match the classification head of {ARGUMENT} {shown}, which has {saved} labels: drop num_labels, or start from the base model without a head"
            )))
        }
        (Some(asked), _) => Some(asked),
        (None, _) => saved_labels,
    };
    let num_labels = if labels.is_floating_point() {
        num_labels.unwrap_or(1)
    } else {
        let sizes = Sizes { num_labels, ..sizes.clone() };
        super::classes(&sizes, train, eval)?
    };
    Ok(Head::SequenceClassification { num_labels, pad: train.pad_token.or(folder.common.pad_token_id) })
}

impl Plan {
    /// The parameters the checkpoint holds (the estimate the memory check needs).
    pub fn parameter_count(&self) -> u64 {
        self.weights.names().filter_map(|n| self.weights.shape(n)).map(|s| s.iter().product::<i64>() as u64).sum()
    }

    /// The activations of a training micro-batch of `batch` rows of `sequence` tokens.
    pub fn activation_bytes(&self, batch: i64, sequence: i64, element_bytes: u64) -> u64 {
        let shape = self.folder.arch.transformer_shape();
        crate::engine::activations::activation_bytes(
            shape,
            batch,
            sequence,
            element_bytes,
            self.training.gradient_checkpointing,
        )
    }

    /// The parameters' dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn task(&self) -> Task {
        match self.head {
            Head::CausalLm => Task::CausalLm,
            Head::SequenceClassification { .. } => Task::Classification,
        }
    }

    /// What a saved folder has besides the weights: id2label from the data's label names,
    /// else from the folder's config.json.
    pub fn export(&self) -> Export {
        let saved = self.folder.common.id2label.as_ref().map(|map| {
            let mut pairs: Vec<(i64, String)> =
                map.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_owned()))).collect();
            pairs.sort();
            pairs.into_iter().map(|(_, name)| name).collect::<Vec<String>>()
        });
        let labels = self.label_names.clone().or(saved);
        Export::new(&self.folder, &self.head, self.kind, labels.as_deref())
            .with_adapter(self.adapter_config.borrow().clone())
    }

    /// The adapter folder the run starts from, whose weights go into the built model.
    pub fn adapter_dir(&self) -> Option<&Path> {
        self.adapter.as_ref().map(|a| a.dir.as_path())
    }

    /// Builds the model under `root` (whose var store makes parameters of `kind()`) and
    /// reads the checkpoint into it, warning as transformers does about weights newly
    /// initialized or not used.
    pub fn build(&self, root: &nn::Path) -> Result<Box<dyn Model>> {
        let (folder, arch) = (&self.folder, &self.folder.arch);
        let started = std::time::Instant::now();
        let classifier = self.task() == Task::Classification;
        if self.training.lora.as_ref().is_some_and(|spec| spec.targets.is_none()) && arch.lora_targets().is_empty() {
            return Err(InputError::new(format!(
                "lora_target_modules: PEFT has no default LoRA targets for model_type '{}'; name them (--lora-target-modules qkv_proj,o_proj, say, or all-linear)",
                arch.model_type()
            ))
            .into());
        }
        let injector = self.training.lora.clone().map(|spec| Injector::new(spec, arch.lora_targets(), classifier));
        let source = params::ParamSource::new(&self.weights, arch.weight_prefix(), folder.common.initializer_range)
            .with_lora(injector);
        let shown = folder.dir.display().to_string();
        let checkpointing = self.training.gradient_checkpointing;
        let place = arch::Build { src: &source, root, common: &folder.common, head: &self.head, checkpointing };
        let net = arch.build(&place).map_err(|e| InputError::new(format!("{ARGUMENT} {shown}: {e}")))?;
        let mut report = source.finish(&format!("{ARGUMENT} {shown}"))?;
        if let Some(injector) = report.lora.take() {
            let task_type = if classifier { "SEQ_CLS" } else { "CAUSAL_LM" };
            let base = std::fs::canonicalize(&folder.dir).unwrap_or_else(|_| folder.dir.clone());
            let config = AdapterConfig::new(&injector, &base.display().to_string(), task_type, arch.fan_in_fan_out());
            *self.adapter_config.borrow_mut() = Some(config);
        }
        let class = arch.class_name(&self.head);
        tracing::info!(
            "loaded {shown} as {class}: {} parameters in {} in {:.2} s",
            self.parameter_count(),
            export::dtype_name(self.kind),
            started.elapsed().as_secs_f64()
        );
        if !report.unused.is_empty() {
            tracing::warn!(
                "Some weights of the model checkpoint at {shown} were not used when initializing {class}: {:?}",
                report.unused
            );
        }
        if !report.fresh.is_empty() {
            tracing::warn!(
                "Some weights of {class} were not initialized from the model checkpoint at {shown} and are newly initialized: {:?}. You should probably TRAIN this model on a down-stream task to be able to use it for predictions and inference.",
                report.fresh
            );
        }
        if folder.padding_side() == "left" {
            tracing::info!("{shown}: the tokenizer pads on the left; this host pads training batches on the right, as transformers does for training");
        }
        Ok(Box::new(Pretrained {
            net,
            task: self.task(),
            positions: arch.positions(&folder.common),
            layer_norm_modules: arch.layer_norm_modules(),
            embedding_weights: arch.embedding_weights(),
        }))
    }

    /// The longest sequence the model places: its position table, or its RoPE context.
    pub fn context_length(&self) -> i64 {
        self.folder.context_length()
    }

    /// generation_config.json beside config.json, if any.
    pub fn generation_config(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.folder.dir.join("generation_config.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The folder's tokenizer.json, if it has one.
    pub fn tokenizer_file(&self) -> Option<PathBuf> {
        Some(self.folder.tokenizer_file()).filter(|p| p.is_file())
    }

    /// The token generation stops at: generation_config.json's eos_token_id, else
    /// config.json's.
    pub fn end_token(&self) -> Option<i64> {
        let generation = self.generation_config();
        let eos = generation.as_ref().and_then(|g| g.get("eos_token_id"));
        let first = eos.and_then(|e| e.as_i64().or_else(|| e.get(0).and_then(serde_json::Value::as_i64)));
        first.or(self.folder.common.eos_token_id)
    }
}

/// A pretrained model with its head.
#[derive(Debug)]
struct Pretrained {
    net: Box<dyn Network>,
    task: Task,
    positions: Positions,
    /// Modules that weight decay leaves out by type beyond the default name rule.
    layer_norm_modules: &'static [&'static str],
    /// The embedding tables (left out of the floating-point operation count).
    embedding_weights: &'static [&'static str],
}

impl Pretrained {
    /// What the network reads of a batch.
    fn inputs<'a>(&self, batch: &'a Batch) -> Result<Inputs<'a>> {
        Ok(Inputs {
            ids: self.token_ids(batch)?,
            mask: batch.get("attention_mask"),
            token_types: batch.get("token_type_ids"),
            positions: batch.get(crate::engine::data::PACKED_POSITIONS),
            padded: batch.padded,
        })
    }

    /// The batch's token ids, checked against the model's positions.
    fn token_ids<'a>(&self, batch: &'a Batch) -> Result<&'a Tensor> {
        let ids = batch.require("input_ids", "pretrained")?;
        let length = *ids.size().last().unwrap_or(&0);
        // Learned position tables end; rotary positions go on.
        match self.positions {
            Positions::Learned(positions) if length > positions => Err(InputError::new(format!(
                "sequences of {length} tokens are longer than the model's {positions} positions: lower max_seq_length, or truncate the token ids"
            ))
            .into()),
            _ => Ok(ids),
        }
    }
}

impl Model for Pretrained {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        let logits = self.net.logits(&self.inputs(batch)?, train);
        Ok(Outputs::logits(logits))
    }

    fn enable_neftune(&mut self, alpha: f64) -> bool {
        self.net.input_embeddings().neftune = Some(alpha);
        true
    }

    fn embedding_weights(&self) -> Option<&'static [&'static str]> {
        Some(self.embedding_weights)
    }

    fn forward_hidden(&self, batch: &Batch, train: bool) -> Option<Result<Outputs>> {
        let inputs = match self.inputs(batch) {
            Ok(inputs) => inputs,
            Err(e) => return Some(Err(e)),
        };
        let head = self.net.head_input(&inputs, train)?;
        Some(Ok(Outputs::hidden(head)))
    }

    fn generate(&self, prompt: &Tensor, new_tokens: i64, stop: Option<i64>) -> Option<Result<Tensor>> {
        let mut greedy = |logits: &Tensor| logits.argmax(-1, false).int64_value(&[]);
        let mut ends = |tokens: &[i64]| stop.is_some() && tokens.last().copied() == stop;
        let mut decoding = Decoding { max_new_tokens: new_tokens, choose: &mut greedy, ends: &mut ends };
        let new = self.decode(prompt, &mut decoding)?;
        Some(new.map(|new| Tensor::cat(&[prompt, &Tensor::from_slice(&new).to_kind(prompt.kind())], 0)))
    }

    fn decode(&self, prompt: &Tensor, decoding: &mut Decoding) -> Option<Result<Vec<i64>>> {
        if self.task != Task::CausalLm {
            return None;
        }
        if decoding.max_new_tokens < 1 {
            return Some(Ok(Vec::new()));
        }
        // With a KV cache the prompt runs once, then each new token alone; without one (a
        // network that keeps none, or a completion past the context) each step reruns the
        // last context's worth of tokens.
        let window_logits = |ids: &Tensor| {
            let (t, longest) = (ids.size()[0], self.positions.max_length());
            let window = ids.narrow(0, (t - longest).max(0), t.min(longest));
            self.net.logits(&Inputs::ids(&window.unsqueeze(0)), false)
        };
        Some(tch::no_grad(|| {
            let fits = prompt.size()[0] + decoding.max_new_tokens <= self.positions.max_length();
            let mut cache = KvCache::default();
            let cached = fits.then(|| self.net.logits_after(&prompt.unsqueeze(0), &mut cache)).flatten();
            let use_cache = cached.is_some();
            let mut logits = cached.unwrap_or_else(|| window_logits(prompt));
            let (mut ids, mut new) = (prompt.shallow_clone(), Vec::new());
            loop {
                // As transformers: the scores are the last position's logits in float32.
                let token = (decoding.choose)(&logits.get(0).get(-1).to_kind(Kind::Float));
                new.push(token);
                if (decoding.ends)(&new) || new.len() as i64 == decoding.max_new_tokens {
                    return Ok(new);
                }
                let next = Tensor::from_slice(&[token]).to_device(prompt.device());
                logits = match use_cache {
                    true => self.net.logits_after(&next.view([1, 1]), &mut cache).expect("the network keeps a cache"),
                    false => {
                        ids = Tensor::cat(&[&ids, &next], 0);
                        window_logits(&ids)
                    }
                };
            }
        }))
    }

    fn reads_packed_positions(&self) -> bool {
        self.net.reads_packed_positions()
    }

    fn decays(&self, name: &str) -> bool {
        // HF excludes nn.LayerNorm modules by type, whatever their names (GPT-2's ln_*).
        let layer_norm = name.split('.').any(|part| self.layer_norm_modules.contains(&part));
        crate::engine::optim::decays(name) && !layer_norm
    }
}
