//! LoRA adapters as PEFT makes them: which linear layers get one (PEFT's matching rules),
//! the adapter's own weights (lora_A Kaiming-uniform, lora_B zero, output scaled by
//! alpha / r), and the adapter folder (`adapter_config.json`, `adapter_model.safetensors`
//! with PEFT's tensor names) that `PeftModel.from_pretrained` loads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::error::InputError;

/// The file names of a PEFT adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// PEFT's prefix of every saved adapter tensor: the PeftModel's `base_model.model`.
const PEFT_PREFIX: &str = "base_model.model.";

/// The heads PEFT trains in full for sequence classification (SEQ_CLS_HEAD_NAMES).
pub const CLASSIFIER_HEADS: &[&str] = &["classifier", "score"];

/// Which linear layers get an adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Module names, each matching a module's whole name or its last parts.
    Named(Vec<String>),
    /// Every linear layer but the output head (PEFT's `all-linear`).
    AllLinear,
}

impl Targets {
    /// `lora_target_modules` as given.
    pub fn parse(text: &str) -> Self {
        match text.trim() {
            t if t.eq_ignore_ascii_case("all-linear") => Targets::AllLinear,
            t => Targets::Named(split_list(t)),
        }
    }

    /// PEFT's default for the architecture (its `lora_targets`).
    fn defaults(targets: &[&str]) -> Self {
        Targets::Named(targets.iter().map(|s| (*s).to_owned()).collect())
    }
}

/// A comma-separated list, trimmed, without empty items.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

/// The LoRA settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// None: PEFT's default for the architecture, decided when the folder is known.
    pub targets: Option<Targets>,
    pub modules_to_save: Vec<String>,
    pub rslora: bool,
}

impl LoraSpec {
    /// The factor on the adapter's output: alpha / r, or alpha / sqrt(r) (rsLoRA).
    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// Whether `module` is `name` or inside it, with `name` matched on whole dotted parts at
/// the end of a prefix (PEFT's `(^|.*\.)name($|\..*)`).
pub fn within(module: &str, name: &str) -> bool {
    format!(".{module}.").contains(&format!(".{name}."))
}

/// Whether `module` is a target (PEFT's rule: the whole name, or its last dotted parts).
fn named_target(module: &str, target: &str) -> bool {
    module == target || module.ends_with(&format!(".{target}"))
}

/// Decides, while the model is built, which linear layers get an adapter; remembers which
/// targets matched and which linear layers exist, for the error when a target matches none.
#[derive(Debug)]
pub struct Injector {
    pub spec: LoraSpec,
    targets: Targets,
    /// Modules trained in full (the user's and, for a classifier, its head).
    pub modules_to_save: Vec<String>,
    /// The output head's module (lm_head), which all-linear leaves alone.
    output_head: &'static str,
    linear: std::cell::RefCell<Vec<String>>,
    injected: std::cell::RefCell<Vec<String>>,
    /// The user's modules_to_save that some parameter lies in.
    saved_matched: std::cell::RefCell<Vec<String>>,
}

impl Injector {
    /// `default_targets`: PEFT's for the architecture, used when the spec names none.
    pub fn new(spec: LoraSpec, default_targets: &[&str], classifier: bool) -> Self {
        let targets = spec.targets.clone().unwrap_or_else(|| Targets::defaults(default_targets));
        let mut modules_to_save = spec.modules_to_save.clone();
        if classifier {
            for head in CLASSIFIER_HEADS {
                if !modules_to_save.iter().any(|m| m == head) {
                    modules_to_save.push((*head).to_owned());
                }
            }
        }
        Self {
            spec,
            targets,
            modules_to_save,
            output_head: "lm_head",
            linear: Default::default(),
            injected: Default::default(),
            saved_matched: Default::default(),
        }
    }

    /// Whether a parameter of `module` is trained (LoRA freezes all but modules_to_save);
    /// the module to save it lies in is noted for [`check`](Self::check).
    pub fn trains(&self, module: &str) -> bool {
        let Some(name) = self.saved_module(module) else { return false };
        let mut matched = self.saved_matched.borrow_mut();
        if !matched.contains(name) {
            matched.push(name.clone());
        }
        true
    }

    /// The module to save that `module` lies in, if any.
    fn saved_module(&self, module: &str) -> Option<&String> {
        self.modules_to_save.iter().find(|m| within(module, m))
    }

    /// Whether linear layer `module` gets an adapter.
    pub fn targets(&self, module: &str) -> bool {
        self.linear.borrow_mut().push(module.to_owned());
        if self.trains(module) {
            return false; // PEFT never adapts a module it trains in full.
        }
        let hit = match &self.targets {
            Targets::AllLinear => module != self.output_head,
            Targets::Named(names) => names.iter().any(|t| named_target(module, t)),
        };
        if hit {
            self.injected.borrow_mut().push(module.to_owned());
        }
        hit
    }

    /// The adapted modules' names, as adapter_config.json lists them: the names given, or
    /// for all-linear the full names of the layers it chose (as PEFT writes them).
    pub fn target_modules(&self) -> Vec<String> {
        match &self.targets {
            Targets::Named(names) => names.clone(),
            Targets::AllLinear => self.injected.borrow().clone(),
        }
    }

    /// Every named target must have matched a linear layer, and every module to save
    /// the user named some module of the model.
    pub fn check(&self) -> Result<(), String> {
        let matched = self.saved_matched.borrow();
        // PEFT lists both classifier names for any classifier: not the user's mistake.
        let unknown: Vec<&str> = self
            .spec
            .modules_to_save
            .iter()
            .filter(|m| !matched.contains(m) && !CLASSIFIER_HEADS.contains(&m.as_str()))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "lora_modules_to_save {} matches no module of the model; name modules as in the parameter names (score, classifier, lm_head, embed_tokens)",
                unknown.join(", ")
            ));
        }
        let injected = self.injected.borrow();
        let linear = self.linear.borrow();
        // A target inside a module trained in full (PEFT lists a classifier's layers in
        // target_modules and trains the classifier through modules_to_save) is matched.
        let trained_in_full = |t: &str| linear.iter().any(|m| self.saved_module(m).is_some() && named_target(m, t));
        let unmatched: Vec<&str> = match &self.targets {
            Targets::Named(names) => names
                .iter()
                .filter(|t| !injected.iter().any(|m| named_target(m, t)) && !trained_in_full(t))
                .map(String::as_str)
                .collect(),
            Targets::AllLinear => Vec::new(),
        };
        if unmatched.is_empty() && !injected.is_empty() {
            return Ok(());
        }
        let mut short: Vec<&str> = Vec::new();
        for module in linear.iter() {
            short.push(module.rsplit('.').next().unwrap_or(module));
        }
        short.sort_unstable();
        short.dedup();
        let what = if unmatched.is_empty() {
            "no linear layer is left to adapt".to_owned()
        } else {
            format!("lora_target_modules {} match no linear layer of the model", unmatched.join(", "))
        };
        Err(format!("{what}; its linear layers are: {} (or all-linear)", short.join(", ")))
    }
}

/// One layer's adapter: y += scaling * B(A(dropout(x))).
#[derive(Debug)]
pub struct Lora {
    /// [r, in]
    pub a: Tensor,
    /// [out, r]
    pub b: Tensor,
    pub scaling: f64,
    pub dropout: f64,
}

impl Lora {
    /// The adapter's addition to the layer's output for input `x` (in the adapter's dtype,
    /// float32 over a bfloat16 model as PEFT keeps it, then cast back to `x`'s).
    pub fn delta(&self, x: &Tensor, train: bool) -> Tensor {
        let kind = x.kind();
        let out = self.input(x, train).linear::<&Tensor>(&self.a, None).linear::<&Tensor>(&self.b, None) * self.scaling;
        if out.kind() == kind {
            out
        } else {
            out.to_kind(kind)
        }
    }

    /// The adapter's down projection, scaled: scaling * A(dropout(x)) [.., r], in the
    /// adapter's dtype (B of it is the delta).
    pub fn down(&self, x: &Tensor, train: bool) -> Tensor {
        self.input(x, train).linear::<&Tensor>(&self.a, None) * self.scaling
    }

    /// `x` in the adapter's dtype, with the adapter's dropout in training.
    fn input(&self, x: &Tensor, train: bool) -> Tensor {
        let input = if x.kind() == self.a.kind() { x.shallow_clone() } else { x.to_kind(self.a.kind()) };
        match train && self.dropout > 0.0 {
            true => input.dropout(self.dropout, true),
            false => input,
        }
    }
}

/// adapter_config.json: the fields PEFT's LoraConfig writes that matter here; the others
/// are kept as read and written back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub r: i64,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: Value,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

impl AdapterConfig {
    /// The config PEFT would write for this adapter.
    pub fn new(injector: &Injector, base: &str, task_type: &str, fan_in_fan_out: bool) -> Self {
        let spec = &injector.spec;
        let rest = serde_json::json!({
            "bias": "none",
            "init_lora_weights": true,
            "inference_mode": true,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
            "auto_mapping": null,
            "revision": null,
        });
        Self {
            peft_type: "LORA".to_owned(),
            r: spec.r,
            lora_alpha: spec.alpha,
            lora_dropout: spec.dropout,
            target_modules: injector.target_modules().into(),
            modules_to_save: Some(injector.modules_to_save.clone()).filter(|m| !m.is_empty()),
            base_model_name_or_path: Some(base.to_owned()),
            task_type: Some(task_type.to_owned()),
            fan_in_fan_out,
            use_rslora: spec.rslora,
            rest: rest.as_object().cloned().unwrap_or_default(),
        }
    }

    /// The LoRA settings it describes; features this host does not implement are refused
    /// by their key.
    pub fn spec(&self) -> Result<LoraSpec, String> {
        if self.peft_type != "LORA" {
            return Err(format!("peft_type {} is not supported; this host trains LoRA adapters", self.peft_type));
        }
        let set = |key: &str| match self.rest.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Object(map)) => !map.is_empty(),
            Some(Value::Array(list)) => !list.is_empty(),
            Some(Value::String(s)) => !(s.is_empty() || (key == "bias" && s == "none")),
            Some(_) => true,
        };
        for key in [
            "use_dora",
            "rank_pattern",
            "alpha_pattern",
            "layers_to_transform",
            "bias",
            "target_parameters",
            "exclude_modules",
            "lora_bias",
            "megatron_config",
        ] {
            if set(key) {
                return Err(format!("{key} is set, which this host does not implement"));
            }
        }
        let targets = match &self.target_modules {
            Value::String(s) if s.eq_ignore_ascii_case("all-linear") => Targets::AllLinear,
            Value::String(s) => {
                return Err(format!(
                "target_modules is the regular expression '{s}', which this host does not match; list the module names"
            ))
            }
            Value::Array(list) => Targets::Named(list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()),
            other => return Err(format!("target_modules {other} is not a list of module names")),
        };
        Ok(LoraSpec {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: Some(targets),
            modules_to_save: self.modules_to_save.clone().unwrap_or_default(),
            rslora: self.use_rslora,
        })
    }
}

/// An adapter folder given as model_name_or_path: its LoRA settings, and where its base is.
#[derive(Debug, Clone)]
pub struct AdapterFolder {
    pub dir: PathBuf,
    /// The LoRA settings its adapter_config.json gives (checked when opened).
    pub spec: LoraSpec,
    /// The base model's folder (base_model_name_or_path).
    pub base: PathBuf,
}

impl AdapterFolder {
    /// Whether `dir` is an adapter folder (it holds adapter_config.json).
    pub fn is_one(dir: &Path) -> bool {
        dir.join(ADAPTER_CONFIG).is_file()
    }

    /// `dir` when it is an adapter folder, else None.
    pub fn open(dir: &Path, argument: &str) -> Result<Option<Self>, InputError> {
        if !Self::is_one(dir) {
            return Ok(None);
        }
        let path = dir.join(ADAPTER_CONFIG);
        let shown = dir.display();
        let refuse = |problem: String| InputError::new(format!("{argument} {shown}: {ADAPTER_CONFIG}: {problem}"));
        let text = std::fs::read_to_string(&path).map_err(|e| refuse(e.to_string()))?;
        let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| refuse(e.to_string()))?;
        let spec = config.spec().map_err(refuse)?;
        let Some(base) = config.base_model_name_or_path.clone().filter(|b| !b.is_empty()) else {
            return Err(refuse(
                "base_model_name_or_path is not set: the adapter does not say which model it adapts".into(),
            ));
        };
        let mut base_dir = PathBuf::from(&base);
        if base_dir.is_relative() && !base_dir.exists() && dir.join(&base_dir).is_dir() {
            base_dir = dir.join(base_dir);
        }
        if !base_dir.is_dir() {
            return Err(refuse(format!(
                "its base model {base} is not a local folder: download it (hf download {base} --local-dir DIR) and set base_model_name_or_path in {} to DIR",
                path.display()
            )));
        }
        if !dir.join(ADAPTER_WEIGHTS).is_file() {
            return Err(InputError::new(format!(
                "{argument} {shown} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; save the adapter with safetensors (PEFT's default)"
            )));
        }
        Ok(Some(Self { dir: dir.to_path_buf(), spec, base: base_dir }))
    }
}

/// The name PEFT saves a trained tensor under (`base_model.model.<name>`, without the
/// adapter's name).
pub fn peft_name(name: &str) -> String {
    format!("{PEFT_PREFIX}{name}")
}

/// The host's parameter name for a tensor of a PEFT adapter file, if it has PEFT's prefix.
pub fn host_name(saved: &str) -> Option<String> {
    let name = saved.strip_prefix(PEFT_PREFIX)?;
    // Files saved with the adapter's name in the key (`lora_A.default.weight`).
    Some(name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."))
}

/// Whether a parameter is an adapter's own (lora_A, lora_B).
pub fn is_adapter_weight(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// The tensors an adapter file holds: the trained ones (adapters and modules to save),
/// by PEFT's names, sorted.
pub fn adapter_tensors(vars: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vars
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(name, t)| (peft_name(&name), t.detach()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Reads the adapter of folder `dir` (adapter_model.safetensors) into the model's trained
/// tensors: each must be there with its shape, and nothing else. `what` names the
/// argument in errors.
pub fn load_adapter(vars: &tch::nn::VarStore, dir: &Path, what: &str) -> Result<(), InputError> {
    let file = dir.join(ADAPTER_WEIGHTS);
    let shown = dir.display();
    if !file.is_file() {
        return Err(InputError::new(format!(
            "{what}: {shown} has no {ADAPTER_WEIGHTS}; a LoRA run saves and loads adapters"
        )));
    }
    let weights = crate::engine::weights::WeightFiles::open(&[file])
        .map_err(|e| InputError::new(format!("{what}: {shown}: {e}")))?;
    let trained: std::collections::BTreeMap<String, Tensor> =
        vars.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for saved in weights.names() {
        let name = host_name(saved).unwrap_or_else(|| saved.to_owned());
        match trained.get(&name) {
            None => problems.push(format!("unexpected {saved}")),
            Some(var) if weights.shape(saved) != Some(&var.size()[..]) => problems.push(format!(
                "{saved} is {:?}, the model has {:?}",
                weights.shape(saved).unwrap_or_default(),
                var.size()
            )),
            Some(var) => found.push((saved.to_owned(), name, var.shallow_clone())),
        }
    }
    let missing: Vec<String> =
        trained.keys().filter(|n| !found.iter().any(|(_, name, _)| name == *n)).map(|n| peft_name(n)).collect();
    if !missing.is_empty() {
        let more = if missing.len() > 3 { format!(" and {} more", missing.len() - 3) } else { String::new() };
        problems.push(format!("missing {}{more}", missing[..missing.len().min(3)].join(", ")));
    }
    if !problems.is_empty() {
        problems.truncate(4);
        return Err(InputError::new(format!(
            "{what}: the adapter in {shown} does not fit this model and LoRA settings ({}); use the base model, r and target_modules it was made with",
            problems.join("; ")
        )));
    }
    for (saved, _, var) in found {
        weights.read_into(&saved, &var).map_err(|e| InputError::new(format!("{what}: {shown}: {e}")))?;
    }
    Ok(())
}

/// The whole model's tensors with each adapter merged into its layer's weight
/// (W + scaling B A; transposed for GPT-2's Conv1D), the adapters themselves left out:
/// what `merge_and_unload` then `save_pretrained` writes.
pub fn merged_tensors(vars: &tch::nn::VarStore, config: &AdapterConfig) -> Result<Vec<(String, Tensor)>, String> {
    let spec = config.spec()?;
    let variables = vars.variables();
    let mut merged = Vec::new();
    for (name, tensor) in &variables {
        if is_adapter_weight(name) {
            continue;
        }
        let module = name.strip_suffix(".weight");
        let pair = module.and_then(|m| {
            Some((variables.get(&format!("{m}.lora_A.weight"))?, variables.get(&format!("{m}.lora_B.weight"))?))
        });
        let value = match pair {
            Some((a, b)) => tch::no_grad(|| {
                let delta = b.matmul(a) * spec.scaling();
                let delta = if config.fan_in_fan_out { delta.transpose(0, 1) } else { delta };
                (tensor.to_kind(Kind::Float) + delta).to_kind(tensor.kind())
            }),
            None => tensor.detach(),
        };
        merged.push((name.clone(), value));
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(merged)
}
