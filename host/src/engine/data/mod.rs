//! Training and evaluation data: named tensors with one row per example, the train/eval
//! split, and seeded batch order.
//!
//! A data set is a list of fields (`input`, `labels`, `input_ids`, `attention_mask`,
//! `teacher_logits`, ...), each a tensor whose first dimension is the example. A batch has
//! the same fields; the model reads the ones it needs and a loss plugin receives them all.

mod arrow;
pub mod chat;
mod digits;
mod files;
mod label_names;
mod packing;
mod parquet;
pub mod prefetch;
mod sft;
mod text;
mod token_labels;
pub mod transform;

pub(crate) use chat::token_text;

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::error::InputError;

pub use digits::load_digits;
pub use files::load_file;

/// A token a tokenizer setting names: by its text, or by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    Text(String),
    Id(i64),
}

/// How to read a file's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct FileOptions {
    /// The field or column holding the labels (default: `labels`, else `label`).
    pub label_column: Option<String>,
    /// CSV: the feature columns, in order (default: every column but the label).
    pub feature_columns: Option<Vec<String>>,
    /// JSONL: the key holding the text.
    pub text_column: String,
    /// JSONL: the tokenizer.json that turns text into token ids.
    pub tokenizer_file: Option<String>,
    /// JSONL: texts are truncated to this many tokens.
    pub max_seq_length: i64,
    /// Chat and prompt-completion data: what max_seq_length is for them (TRL's default
    /// 1024 where it is not given).
    pub sft_max_seq_length: i64,
    /// JSONL: the token after which completions are evaluated.
    pub generation_separator: Option<String>,
    /// Text: the padding token, first of these the tokenizer knows (a pretrained model's
    /// settings); else the tokenizer's own padding or a conventional pad token.
    pub pad_candidates: Vec<TokenRef>,
    /// Chat data: only the assistant's tokens are learned (TRL's assistant_only_loss).
    pub assistant_only_loss: bool,
    /// Prompt-completion data: only the completion's tokens are learned.
    pub completion_only_loss: bool,
    /// Language-modelling data: short examples packed into rows of max_seq_length tokens.
    pub packing: bool,
    /// The pretrained model's class when it is a sequence classifier: its unlabelled
    /// texts are texts to classify (labels -100, to predict), never language modelling.
    pub classifier: Option<String>,
}

/// The field of packed rows' positions, restarting at 0 where each example begins.
pub const PACKED_POSITIONS: &str = "position_ids";

/// The data a run trains and evaluates on, as the arguments name it.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// Training data; `None` for the embedded digits.
    pub train_file: Option<PathBuf>,
    /// Evaluation data; `None` to split `validation_split_percentage` off the training data.
    pub eval_file: Option<PathBuf>,
    pub files: FileOptions,
    pub validation_split_percentage: f64,
    /// Whether the run evaluates (or predicts) at all: without an eval_file, the split is
    /// taken only then.
    pub evaluates: bool,
    pub max_train_samples: Option<i64>,
    pub max_eval_samples: Option<i64>,
}

/// The run's training and evaluation data: the files the spec names, or the embedded
/// digits; without an eval_file, a fixed-seed split of the training data.
pub fn load(spec: &DataSpec) -> anyhow::Result<(Dataset, Dataset)> {
    let train = match &spec.train_file {
        Some(file) => load_file(file, &spec.files)?,
        None => load_digits()?,
    };
    let (train, eval) = match &spec.eval_file {
        Some(file) => {
            let eval = same_label_names(&train, load_file(file, &spec.files)?, file)?;
            limit(train, eval, spec.max_train_samples, spec.max_eval_samples)
        }
        None if !spec.evaluates => {
            tracing::info!(
                "no validation split: nothing is evaluated (eval_strategy no, do_eval and do_predict false), so all {} examples train",
                train.len()
            );
            let eval = train.select(&[]);
            (train.truncate(spec.max_train_samples), eval)
        }
        None if train.len() < 2 => {
            let source = spec.train_file.as_ref().map_or("the digits".to_owned(), |f| f.display().to_string());
            return Err(InputError::new(format!(
                "{source}: 1 example; at least 2 are needed to split off evaluation data (validation_split_percentage): give more data, or an eval_file"
            ))
            .into());
        }
        None => split(&train, spec.validation_split_percentage, spec.max_train_samples, spec.max_eval_samples),
    };
    check_same_shapes(&train, &eval, spec)?;
    Ok((train, eval))
}

/// The evaluation data's labels numbered as the training data's, where the training data
/// names its labels.
fn same_label_names(train: &Dataset, mut eval: Dataset, file: &Path) -> Result<Dataset, InputError> {
    let shown = file.display().to_string();
    let Some(names) = &train.label_names else {
        if let Some(eval_names) = &eval.label_names {
            return Err(InputError::new(format!(
                "{shown}: the labels are names ({}), the training data's are class ids; give both as names or both as ids",
                eval_names.join(", ")
            )));
        }
        return Ok(eval);
    };
    let Some(eval_names) = eval.label_names.take() else {
        return Err(InputError::new(format!(
            "{shown}: the labels are class ids, the training data's are names ({}); give both as names or both as ids",
            names.join(", ")
        )));
    };
    let ids = Vec::<i64>::try_from(eval.labels()).map_err(|e| InputError::new(format!("{shown}: {e}")))?;
    let renumbered = label_names::renumber(&eval_names, &ids, names, &shown)?;
    for (name, tensor) in eval.fields.iter_mut() {
        if name == "labels" {
            *tensor = Tensor::from_slice(&renumbered);
        }
    }
    eval.label_names = Some(names.clone());
    Ok(eval)
}

/// The evaluation data must have the training data's fields, shaped alike per example
/// (text, padded to each set's longest, may differ in length).
fn check_same_shapes(train: &Dataset, eval: &Dataset, spec: &DataSpec) -> Result<(), InputError> {
    let eval_source = spec.eval_file.as_ref().map_or("the evaluation split".to_owned(), |f| f.display().to_string());
    for (name, tensor) in &train.fields {
        // A field the evaluation data lacks is named by whatever needs it (the model, a loss).
        let Some(other) = eval.field(name) else { continue };
        let padded = |data: &Dataset, t: &Tensor| data.lengths.is_some() && t.dim() >= 2;
        let skip = if padded(train, tensor) && padded(eval, other) { 2 } else { 1 };
        let (ours, theirs) = (&tensor.size()[skip.min(tensor.dim())..], &other.size()[skip.min(other.dim())..]);
        if tensor.dim() != other.dim() || ours != theirs {
            return Err(InputError::new(format!(
                "{eval_source}: field '{name}' is shaped {:?} per example, the training data's {:?}; give both the same shape",
                &other.size()[1..],
                &tensor.size()[1..]
            )));
        }
    }
    Ok(())
}

/// The seed of the train/eval split: fixed, so every run evaluates on the same examples
/// whatever its training seed.
const SPLIT_SEED: u64 = 0x5eed;

/// Data sets up to this size move to the training device whole; larger ones stay in host
/// memory (or mapped from their file) and each batch moves on its own.
const WHOLE_ON_DEVICE_BYTES: i64 = 1 << 30;

/// Named tensors sharing their first dimension, the example.
#[derive(Debug)]
pub struct Dataset {
    fields: Vec<(String, Tensor)>,
    /// Where batches go (the fields may stay on the CPU; see `WHOLE_ON_DEVICE_BYTES`).
    device: Device,
    /// The tokenizer's vocabulary size, for text data.
    pub vocab_size: Option<i64>,
    /// The token that ends a text (from the tokenizer), for text data.
    pub end_token: Option<i64>,
    /// The token after which completions are evaluated (generation_separator).
    pub separator_token: Option<i64>,
    /// The token text is padded with, for text data.
    pub pad_token: Option<i64>,
    /// The classes' names, where the file gave labels as names (`label_names`).
    pub label_names: Option<Vec<String>>,
    /// Each example's length in tokens (its attention_mask), for text padded to the
    /// longest of the set: batches are cut to their own longest, as Hugging Face's
    /// DataCollatorWithPadding pads (right padding: only padding is cut).
    lengths: Option<Vec<i64>>,
    /// Each example's label items (labels other than -100), counted once on the CPU, so
    /// that a training step's count needs no read from the device.
    label_items: Vec<i64>,
}

impl Dataset {
    /// Checks that every field has one row per example and that `labels` is there.
    pub fn new(source: &str, fields: Vec<(String, Tensor)>) -> Result<Self, InputError> {
        let Some(rows) = fields.first().map(|(_, t)| t.size().first().copied().unwrap_or(0)) else {
            return Err(InputError::new(format!("{source}: no data fields")));
        };
        for (name, tensor) in &fields {
            let size = tensor.size();
            if size.first().copied() != Some(rows) {
                return Err(InputError::new(format!(
                    "{source}: field '{name}' has shape {size:?} but '{}' has {rows} rows; every field needs one row per example",
                    fields[0].0
                )));
            }
        }
        if rows == 0 {
            return Err(InputError::new(format!("{source}: no examples")));
        }
        let fields: Vec<(String, Tensor)> = fields
            .into_iter()
            .map(|(name, tensor)| {
                let tensor = as_class_ids(&name, tensor);
                (name, tensor)
            })
            .collect();
        check_finite(source, &fields)?;
        let lengths = fields
            .iter()
            .find(|(n, t)| n == "attention_mask" && t.dim() == 2)
            .and_then(|(_, mask)| Vec::<i64>::try_from(&mask.ne(0).sum_dim_intlist(1, false, Kind::Int64)).ok());
        let label_items = match fields.iter().find(|(n, _)| n == "labels") {
            Some((_, labels)) => {
                let per_row = labels.ne(-100).reshape([rows, -1]).sum_dim_intlist(1, false, Kind::Int64);
                Vec::<i64>::try_from(&per_row).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let dataset = Self {
            fields,
            device: Device::Cpu,
            vocab_size: None,
            end_token: None,
            separator_token: None,
            pad_token: None,
            label_names: None,
            lengths,
            label_items,
        };
        if dataset.field("labels").is_none() {
            return Err(InputError::new(format!(
                "{source}: no 'labels' field (fields: {}); name the label column or tensor 'labels'",
                dataset.names().join(", ")
            )));
        }
        Ok(dataset)
    }

    pub fn len(&self) -> usize {
        self.fields[0].1.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn field(&self, name: &str) -> Option<&Tensor> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn labels(&self) -> &Tensor {
        self.field("labels").expect("checked in Dataset::new")
    }

    /// Example `index`'s tokens without padding (text data).
    pub fn tokens(&self, index: i64) -> Option<Tensor> {
        let ids = self.field("input_ids")?.get(index);
        let length = self.lengths.as_ref().map_or(ids.size()[0], |lengths| lengths[index as usize]);
        Some(ids.narrow(0, 0, length).to_device(self.device))
    }

    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Dataset {
        Dataset {
            fields: self.fields.iter().map(|(n, t)| (n.clone(), f(t))).collect(),
            device: self.device,
            vocab_size: self.vocab_size,
            end_token: self.end_token,
            separator_token: self.separator_token,
            pad_token: self.pad_token,
            label_names: self.label_names.clone(),
            lengths: self.lengths.clone(),
            label_items: self.label_items.clone(),
        }
    }

    fn bytes(&self) -> i64 {
        self.fields.iter().map(|(_, t)| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64).sum()
    }

    fn select(&self, indices: &[i64]) -> Dataset {
        let index = Tensor::from_slice(indices);
        let mut selected = self.map(|t| t.index_select(0, &index));
        let pick = |values: &[i64]| indices.iter().map(|&i| values[i as usize]).collect();
        selected.lengths = self.lengths.as_deref().map(pick);
        selected.label_items = pick(&self.label_items);
        selected
    }

    fn truncate(self, max: Option<i64>) -> Dataset {
        match max {
            Some(max) if (max as usize) < self.len() => {
                let mut cut = self.map(|t| t.narrow(0, 0, max));
                cut.lengths = self.lengths.as_ref().map(|l| l[..max as usize].to_vec());
                cut.label_items.truncate(max as usize);
                cut
            }
            _ => self,
        }
    }

    /// The label items of the examples at `indices` (a CPU tensor, as `batches` makes
    /// them), as `count_label_items` of their batch, without reading the device.
    pub fn label_items(&self, indices: &Tensor) -> i64 {
        Vec::<i64>::try_from(indices).unwrap_or_default().iter().map(|&i| self.label_items[i as usize]).sum()
    }

    /// The label items of every example.
    pub fn total_label_items(&self) -> i64 {
        self.label_items.iter().sum()
    }

    /// The non-padding tokens of the examples at `indices` (text data with an attention
    /// mask), without reading the device.
    pub fn non_padding_tokens(&self, indices: &Tensor) -> Option<i64> {
        let lengths = self.lengths.as_ref()?;
        Some(Vec::<i64>::try_from(indices).unwrap_or_default().iter().map(|&i| lengths[i as usize]).sum())
    }

    /// The longest example among `rows` (text data), to cut a batch's padding to.
    fn longest(&self, rows: impl Iterator<Item = i64>) -> Option<i64> {
        let lengths = self.lengths.as_ref()?;
        rows.map(|i| lengths[i as usize]).max()
    }

    /// Sends batches to `device`, moving the whole data set there first when it is small.
    pub fn to_device(&self, device: Device) -> Dataset {
        let mut placed = if self.bytes() <= WHOLE_ON_DEVICE_BYTES {
            self.map(|t| t.to_device(device))
        } else {
            self.map(Tensor::shallow_clone)
        };
        placed.device = device;
        placed
    }

    /// The same data, sharing its tensors (for a data-loading thread).
    pub fn shallow_copy(&self) -> Dataset {
        self.map(Tensor::shallow_clone)
    }

    /// One batch by example indices (a CPU tensor, as `batches` makes them).
    pub fn batch(&self, indices: &Tensor) -> Batch {
        let rows = match &self.lengths {
            Some(_) => Vec::<i64>::try_from(indices).unwrap_or_default(),
            None => Vec::new(),
        };
        let data_device = self.fields[0].1.device();
        let indices = indices.to_device(data_device);
        self.make_batch(|t| t.index_select(0, &indices), &rows)
    }

    /// The examples `start..start + len`, in order.
    pub fn slice(&self, start: i64, len: i64) -> Batch {
        let rows: Vec<i64> = (start..start + len).collect();
        self.make_batch(|t| t.narrow(0, start, len), &rows)
    }

    /// `rows`: the examples' indices, read where the data set knows their lengths.
    fn make_batch(&self, rows: impl Fn(&Tensor) -> Tensor, indices: &[i64]) -> Batch {
        let longest = self.longest(indices.iter().copied());
        let has_padding = match (&self.lengths, longest) {
            (Some(lengths), Some(longest)) => Some(indices.iter().any(|&i| lengths[i as usize] < longest)),
            _ => None,
        };
        // Text: the fields padded along the sequence are cut to the batch's longest.
        let width = self.field("attention_mask").map(|m| m.size()[1]);
        let fields = self.fields.iter().map(|(n, t)| {
            let mut rows = rows(t);
            if let (Some(longest), Some(width)) = (longest, width) {
                if rows.dim() >= 2 && rows.size()[1] == width && longest < width {
                    rows = rows.narrow(1, 0, longest.max(1));
                }
            }
            (n.clone(), model_kind(n, rows).to_device(self.device))
        });
        Batch { fields: fields.collect(), padded: has_padding }
    }
}

/// Integer labels of one column ([N, 1], as a table often stores them) are class ids [N].
fn as_class_ids(name: &str, tensor: Tensor) -> Tensor {
    let size = tensor.size();
    if name == "labels" && !tensor.is_floating_point() && size.len() == 2 && size[1] == 1 {
        tensor.reshape([size[0]])
    } else {
        tensor
    }
}

/// Every floating value must be a finite float32 number (models compute in float32): a
/// NaN, an infinity or a float64 beyond float32's range would train to NaN weights. The
/// error names the field, row and column of the first one.
fn check_finite(source: &str, fields: &[(String, Tensor)]) -> Result<(), InputError> {
    for (name, tensor) in fields.iter().filter(|(_, t)| t.is_floating_point() && t.numel() > 0) {
        let flat = tensor.flatten(0, -1);
        let bad = flat.isfinite().logical_not().logical_or(&flat.abs().gt(f32::MAX as f64));
        if bad.any().int64_value(&[]) == 0 {
            continue;
        }
        let index = bad.to_kind(Kind::Int64).argmax(None, false).int64_value(&[]);
        let per_row = (tensor.numel() as i64 / tensor.size()[0]).max(1);
        let value = flat.double_value(&[index]);
        return Err(InputError::new(format!(
            "{source}: field '{name}' has a value that is not a finite float32 number ({value}) at row {}, column {}; clean the data",
            index / per_row,
            index % per_row
        )));
    }
    Ok(())
}

/// Converts a batch field to what models and losses compute with: floating data to float32
/// (autocast lowers it where asked), integer labels and token ids to int64. Per batch, so
/// a mapped file is never copied whole.
fn model_kind(name: &str, tensor: Tensor) -> Tensor {
    let kind = tensor.kind();
    let wanted = if name == "attention_mask" {
        kind
    } else if tensor.is_floating_point() {
        Kind::Float
    } else if matches!(name, "labels" | "input_ids" | "token_type_ids" | PACKED_POSITIONS) {
        Kind::Int64
    } else {
        // Integer features (pixel bytes, counts) are inputs of a float model.
        Kind::Float
    };
    if kind == wanted {
        tensor
    } else {
        tensor.to_kind(wanted)
    }
}

/// A batch: the data set's fields for some examples.
pub struct Batch {
    fields: Vec<(String, Tensor)>,
    /// Whether a row is shorter than the batch (its attention_mask has zeros), where the
    /// data set's lengths tell it without reading the device; `None`: unknown.
    pub padded: Option<bool>,
}

impl Batch {
    pub fn len(&self) -> i64 {
        self.fields[0].1.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// A field the model needs; its absence is the user's data not fitting the model.
    pub fn require(&self, name: &str, model: &str) -> Result<&Tensor, InputError> {
        self.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
            InputError::new(format!(
                "the {model} model reads the data field '{name}', which the data does not have (fields: {})",
                names.join(", ")
            ))
        })
    }

    pub fn labels(&self) -> &Tensor {
        self.get("labels").expect("every data set has labels")
    }

    /// A batch a plugin made (a batch transform's), checked: labels present and one row
    /// count across the fields. The error completes "the batch transforms (...) ...".
    pub fn from_plugin(tensors: plugin_api::Tensors) -> Result<Batch, String> {
        let fields: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
        if !fields.iter().any(|(n, _)| n == "labels") {
            let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!("returned a batch without 'labels' (fields: {})", names.join(", ")));
        }
        let rows = |t: &Tensor| t.size().first().copied();
        let first = rows(&fields[0].1);
        if let Some((name, tensor)) = fields.iter().find(|(_, t)| rows(t) != first || first.is_none()) {
            return Err(format!(
                "returned fields with different numbers of rows ({name} is {:?}, {} is {:?})",
                tensor.size(),
                fields[0].0,
                fields[0].1.size()
            ));
        }
        Ok(Batch { fields, padded: None })
    }

    /// The fields as a loss plugin receives them (shallow copies, no data copied).
    pub fn to_plugin(&self) -> plugin_api::Tensors {
        let mut tensors = plugin_api::Tensors::new();
        for (name, tensor) in &self.fields {
            tensors.insert(name, tensor.shallow_clone());
        }
        tensors
    }
}

/// Which of `names` holds the labels when label_column is not given: `labels`, else
/// `label` (the names Hugging Face datasets use).
fn default_label<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Option<usize> {
    ["labels", "label"].iter().find_map(|wanted| names.clone().position(|n| n == *wanted))
}

/// Rows of different lengths as one row-major [rows, width] matrix, right-padded with
/// `pad`, and the mask of real entries (1) and padding (0).
fn pad_rows<T: Copy>(rows: &[Vec<T>], pad: T, width: usize) -> (Vec<T>, Vec<i64>) {
    let mut values = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for row in rows {
        for position in 0..width {
            values.push(row.get(position).copied().unwrap_or(pad));
            mask.push(i64::from(position < row.len()));
        }
    }
    (values, mask)
}

/// Splits off `eval_percent` of the examples for evaluation, by a fixed seed.
pub fn split(data: &Dataset, eval_percent: f64, max_train: Option<i64>, max_eval: Option<i64>) -> (Dataset, Dataset) {
    let n = data.len();
    debug_assert!(n >= 2, "load checks that a split has examples on both sides");
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(SPLIT_SEED));
    let n_eval = ((n as f64) * eval_percent / 100.0).round().clamp(1.0, (n - 1).max(1) as f64) as usize;
    let (eval_idx, train_idx) = order.split_at(n_eval);
    (data.select(train_idx).truncate(max_train), data.select(eval_idx).truncate(max_eval))
}

/// Applies the sample limits to separately given train and eval sets.
pub fn limit(train: Dataset, eval: Dataset, max_train: Option<i64>, max_eval: Option<i64>) -> (Dataset, Dataset) {
    (train.truncate(max_train), eval.truncate(max_eval))
}

/// The order of training examples in `epoch`: a permutation determined by the seed and the
/// epoch alone, so a run (or a resumed run) can recompute any epoch's order directly.
pub fn epoch_order(len: usize, data_seed: u64, epoch: u64) -> Vec<i64> {
    let mut order: Vec<i64> = (0..len as i64).collect();
    let seed = data_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch;
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// Batches of `batch_size` indices from `order`; the last one may be short unless dropped.
pub fn batches(order: &[i64], batch_size: usize, drop_last: bool) -> Vec<Tensor> {
    order.chunks(batch_size).filter(|chunk| !drop_last || chunk.len() == batch_size).map(Tensor::from_slice).collect()
}

/// Label items that count toward a loss (labels other than -100).
pub fn count_label_items(labels: &Tensor) -> i64 {
    labels.ne(-100).sum(Kind::Int64).int64_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load_and_split_deterministically() {
        let data = load_digits().unwrap();
        assert_eq!(data.len(), 1797);
        assert_eq!(data.field("input").unwrap().size(), [1797, 64]);
        let (train, eval) = split(&data, 20.0, None, None);
        assert_eq!((train.len(), eval.len()), (1438, 359));
        let (train2, _) = split(&data, 20.0, None, None);
        assert!(train.labels().equal(train2.labels()));
        assert_eq!(data.field("input").unwrap().max().double_value(&[]), 1.0);
    }

    #[test]
    fn batches_know_from_the_lengths_whether_they_hold_padding() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]).view([3, 5]);
        let fields = vec![
            ("input_ids".to_owned(), mask.shallow_clone()),
            ("attention_mask".to_owned(), mask),
            ("labels".to_owned(), Tensor::from_slice(&[0i64, 1, 2])),
        ];
        let data = Dataset::new("t", fields).unwrap();
        let padded = |rows: &[i64]| data.batch(&Tensor::from_slice(rows)).padded;
        assert_eq!(padded(&[1, 2]), Some(false));
        assert_eq!(padded(&[0]), Some(false), "cut to its own length");
        assert_eq!(padded(&[2, 0]), Some(true));
        assert_eq!(data.slice(0, 2).padded, Some(true));
        assert_eq!(data.batch(&Tensor::from_slice(&[0i64])).get("attention_mask").unwrap().size(), [1, 3]);
    }

    #[test]
    fn fields_must_share_their_rows_and_include_labels() {
        let ok = Dataset::new("t", vec![("x".into(), Tensor::zeros([3, 2], tch::kind::FLOAT_CPU))]);
        assert!(ok.unwrap_err().to_string().contains("no 'labels' field (fields: x)"));
        let ragged = Dataset::new(
            "t",
            vec![
                ("x".into(), Tensor::zeros([3, 2], tch::kind::FLOAT_CPU)),
                ("labels".into(), Tensor::zeros([4], tch::kind::INT64_CPU)),
            ],
        );
        assert!(ragged.unwrap_err().to_string().contains("field 'labels' has shape [4] but 'x' has 3 rows"));
    }

    #[test]
    fn text_batches_are_cut_to_their_longest_example() {
        let mask = Tensor::from_slice(&[1i64, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]).view([3, 5]);
        let fields = vec![
            ("input_ids".to_owned(), mask.shallow_clone() * 7),
            ("attention_mask".to_owned(), mask),
            ("labels".to_owned(), Tensor::from_slice(&[0i64, 1, 0])),
        ];
        let data = Dataset::new("t", fields).unwrap();
        let batch = data.batch(&Tensor::from_slice(&[2i64, 0]));
        assert_eq!(batch.get("input_ids").unwrap().size(), [2, 3]);
        assert_eq!(batch.get("attention_mask").unwrap().size(), [2, 3]);
        assert_eq!(batch.labels().size(), [2]);
        assert_eq!(data.slice(1, 2).get("input_ids").unwrap().size(), [2, 5]);
        // The split keeps each example's length with it.
        let (train, eval) = split(&data, 34.0, None, None);
        for set in [&train, &eval] {
            let rows = set.len() as i64;
            let batch = set.slice(0, rows);
            let mask = batch.get("attention_mask").unwrap();
            assert_eq!(mask.size()[1], mask.sum_dim_intlist(1, false, Kind::Int64).max().int64_value(&[]));
        }
    }

    #[test]
    fn labels_are_preferred_to_label_wherever_they_stand() {
        assert_eq!(default_label(["label", "x", "labels"].into_iter()), Some(2));
        assert_eq!(default_label(["x", "label"].into_iter()), Some(1));
        assert_eq!(default_label(["x", "y"].into_iter()), None);
    }

    #[test]
    fn epoch_order_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_order(10, 1, 0), epoch_order(10, 1, 0));
        assert_ne!(epoch_order(10, 1, 0), epoch_order(10, 1, 1));
        let mut sorted = epoch_order(10, 1, 3);
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
}
