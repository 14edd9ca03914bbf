//! Parameters named as transformers names them, matched to a checkpoint's tensors while the
//! model is built: each is either found (then read in once the model is complete), or, for
//! a head the checkpoint does not have, initialized as transformers' `_init_weights` does
//! and reported as newly initialized. A body weight that is missing or of another shape
//! is an error naming it; a checkpoint tensor nothing uses is reported as unused.

use std::cell::RefCell;
use std::collections::BTreeSet;

use tch::{nn, Tensor};

use super::lora::{Injector, Lora};
use crate::engine::weights::WeightFiles;
use crate::error::InputError;

/// How a parameter starts when the checkpoint lacks it.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Normal(0, initializer_range): Linear and Embedding weights.
    Normal,
    Zeros,
    Ones,
}

/// Whether the checkpoint must have a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Part of the pretrained body: missing is an error.
    Required,
    /// A task head (or pooler) a base checkpoint may lack: then newly initialized.
    Head,
}

/// Why a checkpoint does not fit the model config.json describes.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadError {
    /// Parameters config.json's model has and the checkpoint lacks (for instance layers
    /// past the checkpoint's last one), by full name.
    Missing(Vec<String>),
    /// Checkpoint tensors of another shape than config.json gives.
    Misshaped(Vec<Misshaped>),
    /// libtorch could not make a parameter (out of memory, say): its name, shape and
    /// libtorch's message.
    Allocation { name: String, shape: Vec<i64>, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Misshaped {
    pub name: String,
    pub saved: Vec<i64>,
    pub expected: Vec<i64>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        const MISMATCH: &str = "the weights do not match config.json: ";
        const SAME_MODEL: &str = "; the folder's config.json and weights must come from the same model";
        match self {
            LoadError::Allocation { name, shape, message } => {
                return write!(f, "cannot make parameter {name} {shape:?}: {message}")
            }
            LoadError::Missing(names) => match layers_beyond_the_checkpoint(names) {
                Some((first, count)) => write!(
                    f,
                    "{MISMATCH}config.json asks for {count} layers, the checkpoint's last is layer {} (missing {})",
                    first - 1,
                    listed(names)
                )?,
                None => write!(f, "{MISMATCH}missing {}", listed(names))?,
            },
            LoadError::Misshaped(wrong) => {
                let shown: Vec<String> = wrong
                    .iter()
                    .take(3)
                    .map(|m| format!("{} is {:?} in the checkpoint, {:?} by config.json", m.name, m.saved, m.expected))
                    .collect();
                write!(f, "{MISMATCH}{}", shown.join("; "))?;
                if wrong.len() > 3 {
                    write!(f, "; {} more of another shape", wrong.len() - 3)?;
                }
            }
        }
        write!(f, "{SAME_MODEL}")
    }
}

/// When every missing name is in a numbered layer (`layers.N.`, `h.N.`, `layer.N.`): the
/// first missing layer and the number of layers asked for (config.json's layer count).
fn layers_beyond_the_checkpoint(names: &[String]) -> Option<(i64, i64)> {
    let layer = |name: &str| {
        let parts: Vec<&str> = name.split('.').collect();
        parts.windows(2).find(|w| matches!(w[0], "layers" | "h" | "layer")).and_then(|w| w[1].parse::<i64>().ok())
    };
    let indices: Vec<i64> = names.iter().map(|n| layer(n)).collect::<Option<_>>()?;
    let first = *indices.iter().min()?;
    (first > 0).then(|| (first, indices.iter().max().unwrap_or(&first) + 1))
}

/// What loading found, for the warnings transformers prints.
#[derive(Debug)]
pub struct Report {
    /// Parameters the checkpoint lacked, newly initialized.
    pub fresh: Vec<String>,
    /// Checkpoint tensors the model does not use.
    pub unused: Vec<String>,
    /// A LoRA run's injector: which layers it adapted.
    pub lora: Option<Injector>,
}

/// A checkpoint being matched against a model under construction.
pub struct ParamSource<'w> {
    weights: &'w WeightFiles,
    /// Checkpoint names lack the base model's prefix (`model.`, `transformer.`, ...) when
    /// the folder holds a base model (LlamaModel, BertModel) rather than one with a head.
    strip: Option<String>,
    init_std: f64,
    found: RefCell<Vec<(String, Tensor)>>,
    fresh: RefCell<Vec<String>>,
    missing: RefCell<Vec<String>>,
    misshaped: RefCell<Vec<Misshaped>>,
    /// The first parameter libtorch could not make.
    failed: RefCell<Option<LoadError>>,
    /// A LoRA run: which layers get adapters; every other weight is frozen.
    lora: Option<Injector>,
}

/// Tensors saved by some transformers versions that are buffers, not parameters.
fn is_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("embeddings.position_ids")
        || name.ends_with("embeddings.token_type_ids")
}

impl<'w> ParamSource<'w> {
    /// `prefix` is the base model's attribute in the head models (`model`, `transformer`,
    /// `bert`, `roberta`).
    pub fn new(weights: &'w WeightFiles, prefix: &str, init_std: f64) -> Self {
        let with_prefix = format!("{prefix}.");
        let base_only = !weights.names().any(|n| n.starts_with(&with_prefix));
        Self {
            weights,
            strip: base_only.then_some(with_prefix),
            init_std,
            found: RefCell::default(),
            fresh: RefCell::default(),
            missing: RefCell::default(),
            misshaped: RefCell::default(),
            failed: RefCell::default(),
            lora: None,
        }
    }

    /// Adds LoRA adapters as `injector` decides, freezing the rest.
    pub fn with_lora(mut self, injector: Option<Injector>) -> Self {
        self.lora = injector;
        self
    }

    /// The adapter of linear layer `path` [outputs, inputs], if LoRA targets it: lora_A
    /// Kaiming-uniform (a = sqrt(5), PEFT's init: U(-1/sqrt(in), 1/sqrt(in))), lora_B zero,
    /// both float32 whatever the model's dtype (PEFT's autocast_adapter_dtype).
    pub fn adapter(&self, path: &nn::Path, inputs: i64, outputs: i64) -> Option<Lora> {
        let injector = self.lora.as_ref()?;
        let module = path.path("");
        let module = module.trim_end_matches('.');
        if !injector.targets(module) {
            return None;
        }
        let spec = &injector.spec;
        let options = (tch::Kind::Float, path.device());
        let bound = 1.0 / (inputs as f64).sqrt();
        let a = Tensor::empty([spec.r, inputs], options).uniform_(-bound, bound);
        let b = Tensor::zeros([outputs, spec.r], options);
        let a = (path / "lora_A").add("weight", a, true);
        let b = (path / "lora_B").add("weight", b, true);
        Some(Lora { a, b, scaling: spec.scaling(), dropout: spec.dropout })
    }

    /// The checkpoint's name for parameter `full` (transformers' name in the head model),
    /// if it has one: with or without the base prefix, and BERT's old `gamma`/`beta`.
    fn checkpoint_name(&self, full: &str) -> Option<String> {
        let name = match &self.strip {
            Some(prefix) => full.strip_prefix(prefix.as_str()).unwrap_or(full),
            None => full,
        };
        let legacy = name
            .strip_suffix("LayerNorm.weight")
            .map(|stem| format!("{stem}LayerNorm.gamma"))
            .or_else(|| name.strip_suffix("LayerNorm.bias").map(|stem| format!("{stem}LayerNorm.beta")));
        [Some(name.to_owned()), legacy].into_iter().flatten().find(|n| self.weights.contains(n))
    }

    /// Parameter `name` of `shape` under `path`.
    pub fn param(&self, path: &nn::Path, name: &str, shape: &[i64], need: Need, init: Init) -> Tensor {
        let full = path.path(name);
        let tensor = self.make(path, name, &full, shape, need, init);
        if let Some(injector) = &self.lora {
            let module = full.rsplit_once('.').map_or("", |(m, _)| m);
            if !injector.trains(module) {
                // Frozen: no gradient, so no optimizer state and no place in checkpoints.
                let _ = tensor.set_requires_grad(false);
            }
        }
        tensor
    }

    fn make(&self, path: &nn::Path, name: &str, full: &str, shape: &[i64], need: Need, init: Init) -> Tensor {
        match self.checkpoint_name(full) {
            Some(source) => {
                let saved = self.weights.shape(&source).unwrap_or_default();
                if saved != shape {
                    // Nothing is allocated for a model that will be refused: config.json's
                    // sizes may be absurd.
                    let expected = shape.to_vec();
                    self.misshaped.borrow_mut().push(Misshaped { name: source, saved: saved.to_vec(), expected });
                    return placeholder(path);
                }
                // Zeros now, the checkpoint's values once the whole model is checked.
                let tensor = self.var(path, name, full, shape, nn::Init::Const(0.0));
                self.found.borrow_mut().push((source, tensor.shallow_clone()));
                tensor
            }
            None => {
                let start = match init {
                    Init::Normal => nn::Init::Randn { mean: 0.0, stdev: self.init_std },
                    Init::Zeros => nn::Init::Const(0.0),
                    Init::Ones => nn::Init::Const(1.0),
                };
                if need == Need::Required {
                    self.missing.borrow_mut().push(full.to_owned());
                    return placeholder(path);
                }
                self.fresh.borrow_mut().push(full.to_owned());
                self.var(path, name, full, shape, start)
            }
        }
    }

    /// A parameter of the model's var store, made with tch's fallible call: a failure is
    /// kept for `finish` to report, and a placeholder stands in meanwhile.
    fn var(&self, path: &nn::Path, name: &str, full: &str, shape: &[i64], init: nn::Init) -> Tensor {
        match path.f_var(name, shape, init) {
            Ok(tensor) => tensor,
            Err(error) => {
                let message = crate::error::first_line(&error.to_string()).to_owned();
                let mut failed = self.failed.borrow_mut();
                failed.get_or_insert(LoadError::Allocation { name: full.to_owned(), shape: shape.to_vec(), message });
                placeholder(path)
            }
        }
    }

    /// Checks the match and reads the found tensors in. `what` names the folder.
    pub fn finish(mut self, what: &str) -> Result<Report, InputError> {
        if let Some(failed) = self.failed.take() {
            return Err(InputError::new(format!("{what}: {failed}")));
        }
        let lora = self.lora.take();
        if let Some(injector) = &lora {
            injector.check().map_err(|e| InputError::new(format!("{what}: {e}")))?;
        }
        let (missing, misshaped) = (self.missing.into_inner(), self.misshaped.into_inner());
        let problem = match (missing.is_empty(), misshaped.is_empty()) {
            (false, _) => Some(LoadError::Missing(missing)),
            (true, false) => Some(LoadError::Misshaped(misshaped)),
            (true, true) => None,
        };
        if let Some(problem) = problem {
            return Err(InputError::new(format!("{what}: {problem}")));
        }
        let found = self.found.into_inner();
        let used: BTreeSet<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        let unused = self.weights.names().filter(|n| !used.contains(n) && !is_buffer(n)).map(str::to_owned).collect();
        for (source, tensor) in &found {
            self.weights.read_into(source, tensor).map_err(|e| InputError::new(format!("{what}: {e}")))?;
        }
        Ok(Report { fresh: self.fresh.into_inner(), unused, lora })
    }
}

/// What stands in for a parameter the checkpoint cannot fill, while the rest of the model
/// is matched (the load is refused at the end).
fn placeholder(path: &nn::Path) -> Tensor {
    Tensor::zeros([0], (tch::Kind::Float, path.device()))
}

/// The first few names and how many more.
fn listed(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
    match names.len() {
        n if n > 4 => format!("{} and {} more", shown.join(", "), n - 4),
        _ => shown.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_past_the_checkpoints_last_are_named_as_the_layer_count() {
        let missing: Vec<String> = (1..100_000)
            .flat_map(|i| {
                [format!("model.layers.{i}.mlp.up_proj.weight"), format!("model.layers.{i}.mlp.down_proj.weight")]
            })
            .collect();
        let text = LoadError::Missing(missing).to_string();
        assert!(
            text.starts_with("the weights do not match config.json: config.json asks for 100000 layers, the checkpoint's last is layer 0 (missing model.layers.1.mlp.up_proj.weight"),
            "{text}"
        );
        let other = LoadError::Missing(vec!["model.norm.weight".to_owned()]).to_string();
        assert!(other.starts_with("the weights do not match config.json: missing model.norm.weight;"), "{other}");
    }
}
