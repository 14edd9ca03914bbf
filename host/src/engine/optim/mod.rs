//! The host's own optimizers. Owning them (rather than tch's, whose state is hidden inside
//! libtorch) lets checkpoints save and restore every moment exactly. Each one follows its
//! reference step for step: `torch.optim` (adamw, adam, sgd, rmsprop, adagrad), the Lion
//! paper's reference code, and Hugging Face's Adafactor.

mod adafactor;
mod adagrad;
mod adam;
mod lion;
mod master;
mod rmsprop;
pub mod schedule;
mod sgd;

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::error::InputError;

/// A trainable tensor and the weight decay that applies to it.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub weight_decay: f64,
}

impl Param {
    /// The gradient, if the last backward pass reached this parameter.
    fn grad(&self) -> Option<Tensor> {
        let grad = self.tensor.grad();
        grad.defined().then_some(grad)
    }
}

/// Hugging Face Trainer's rule: no weight decay for biases and normalisation weights.
pub fn decays(name: &str) -> bool {
    let lower = name.to_lowercase();
    let parts: Vec<&str> = lower.split('.').collect();
    !(lower.contains("bias")
        || lower.contains("layernorm")
        || lower.contains("rmsnorm")
        || parts.contains(&"norm")
        || parts.iter().any(|p| p.ends_with("_norm")))
}

/// What a checkpoint keeps of an optimizer: its state tensors, named
/// `{parameter}.{slot}` (e.g. `layers.0.weight.exp_avg`), and its counters.
pub struct OptimizerState {
    pub tensors: Vec<(String, Tensor)>,
    pub scalars: serde_json::Value,
}

/// An optimizer over a fixed list of parameters.
pub trait Optimizer {
    /// Applies one update with learning rate `lr` from the parameters' gradients; an error
    /// is libtorch's (out of memory, say).
    fn step(&mut self, lr: f64) -> Result<(), String>;

    /// Applies one update unless `skip` (a float scalar on the parameters' device) holds
    /// 1, deciding on the device so that the host waits for nothing. `Ok(false)`: this
    /// optimizer cannot decide there; the caller reads `skip` and calls `step` itself.
    fn step_unless(&mut self, lr: f64, skip: &Tensor) -> Result<bool, String> {
        let _ = (lr, skip);
        Ok(false)
    }

    /// The parameters it updates.
    fn params(&self) -> &[Param];

    /// Its state, for a checkpoint.
    fn state(&self) -> Result<OptimizerState, String>;

    /// Restores a state that `state` returned (for the same parameters).
    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String>;

    /// After the parameters changed outside the optimizer (rank 0's weights broadcast):
    /// copies they keep of them follow.
    fn refresh_from_params(&mut self) {}

    /// Clears the gradients (in place, keeping their memory).
    fn zero_grad(&mut self) -> Result<(), String> {
        let grads: Vec<Tensor> = self.params().iter().filter_map(Param::grad).collect();
        if grads.is_empty() {
            return Ok(());
        }
        crate::native::zero_grads(&grads.iter().collect::<Vec<_>>())
    }

    /// Scales gradients so that their global L2 norm is at most `max_norm` (0 disables),
    /// as `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping as a tensor,
    /// so nothing waits on the device unless it is read.
    fn clip_grad_norm(&mut self, max_norm: f64) -> Result<Tensor, String> {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.params().iter().filter_map(Param::grad).collect();
        if grads.is_empty() {
            return Ok(Tensor::zeros([], (Kind::Float, tch::Device::Cpu)));
        }
        // A bound beyond float32's range can never clip (as in PyTorch, where the clipping
        // coefficient becomes inf and is clamped to 1); libtorch would refuse it as a scalar.
        let max_norm = if max_norm > f32::MAX as f64 { 0.0 } else { max_norm };
        crate::native::clip_grad_norm(&grads.iter().collect::<Vec<_>>(), max_norm)
    }
}

/// Settings shared by the Adam family, from the training arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    AdamW,
    Adam,
    Sgd,
    RmsProp,
    Adagrad,
    Lion,
    Adafactor,
}

impl OptimizerKind {
    /// The optimizer an HF `optim` name means (ours, or Hugging Face's spelling).
    pub fn from_name(optim: &str) -> Option<Self> {
        Some(match optim {
            "adamw" | "adamw_torch" | "adamw_torch_fused" => Self::AdamW,
            "adam" => Self::Adam,
            "sgd" => Self::Sgd,
            "rmsprop" => Self::RmsProp,
            "adagrad" => Self::Adagrad,
            "lion" | "lion_32bit" => Self::Lion,
            "adafactor" => Self::Adafactor,
            _ => return None,
        })
    }

    /// Its canonical name, which runs and checkpoints record.
    pub fn name(self) -> &'static str {
        match self {
            Self::AdamW => "adamw",
            Self::Adam => "adam",
            Self::Sgd => "sgd",
            Self::RmsProp => "rmsprop",
            Self::Adagrad => "adagrad",
            Self::Lion => "lion",
            Self::Adafactor => "adafactor",
        }
    }

    /// The `optim_args` keys it takes.
    fn settings(self) -> &'static [&'static str] {
        match self {
            Self::AdamW | Self::Adam => &["amsgrad"],
            Self::Sgd => &["momentum", "dampening", "nesterov"],
            Self::RmsProp => &["alpha", "eps", "momentum", "centered"],
            Self::Adagrad => &["lr_decay", "eps", "initial_accumulator_value"],
            Self::Lion => &["beta1", "beta2"],
            Self::Adafactor => &["beta1", "decay_rate", "clip_threshold", "eps1"],
        }
    }
}

pub const OPTIMIZER_NAMES: &str = "adamw (or adamw_torch), adam, sgd, rmsprop, adagrad, lion, adafactor";

/// An optimizer with its settings, as the arguments ask for it, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimizerSpec {
    /// AdamW (`decoupled` weight decay) or Adam (decay as an L2 term of the gradient).
    Adam {
        adam: AdamSettings,
        amsgrad: bool,
        decoupled: bool,
    },
    Sgd {
        momentum: f64,
        dampening: f64,
        nesterov: bool,
    },
    RmsProp {
        alpha: f64,
        eps: f64,
        momentum: f64,
        centered: bool,
    },
    Adagrad {
        lr_decay: f64,
        eps: f64,
        initial_accumulator_value: f64,
    },
    Lion {
        beta1: f64,
        beta2: f64,
    },
    Adafactor(adafactor::Settings),
    /// A plugin's optimizer component (`optim = "plugin:NAME"`), built by the trainer.
    Plugin(String),
}

impl OptimizerSpec {
    /// The optimizer named `optim` (HF names) with HF `optim_args` (`key=value` pairs);
    /// the Adam family's betas and epsilon come from the training arguments.
    pub fn parse(optim: &str, optim_args: &str, adam: AdamSettings) -> Result<Self, InputError> {
        let kind = OptimizerKind::from_name(optim)
            .ok_or_else(|| InputError::new(format!("optim '{optim}' is not one of: {OPTIMIZER_NAMES}")))?;
        let args = OptimArgs { optim: kind.name(), pairs: parse_optim_args(optim_args)?, allowed: kind.settings() };
        args.check()?;
        Ok(match kind {
            OptimizerKind::AdamW => Self::Adam { adam, amsgrad: args.flag("amsgrad")?, decoupled: true },
            OptimizerKind::Adam => Self::Adam { adam, amsgrad: args.flag("amsgrad")?, decoupled: false },
            OptimizerKind::Sgd => {
                let momentum = args.float("momentum", 0.0)?;
                let nesterov = args.flag("nesterov")?;
                let dampening = args.float("dampening", 0.0)?;
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(InputError::new("optim_args: nesterov needs momentum > 0 and dampening 0"));
                }
                Self::Sgd { momentum, dampening, nesterov }
            }
            OptimizerKind::RmsProp => Self::RmsProp {
                alpha: args.float("alpha", 0.99)?,
                eps: args.float("eps", 1e-8)?,
                momentum: args.float("momentum", 0.0)?,
                centered: args.flag("centered")?,
            },
            OptimizerKind::Adagrad => Self::Adagrad {
                lr_decay: args.float("lr_decay", 0.0)?,
                eps: args.float("eps", 1e-10)?,
                initial_accumulator_value: args.float("initial_accumulator_value", 0.0)?,
            },
            OptimizerKind::Lion => {
                Self::Lion { beta1: args.float("beta1", adam.beta1)?, beta2: args.float("beta2", adam.beta2)? }
            }
            OptimizerKind::Adafactor => Self::Adafactor(adafactor::Settings {
                beta1: args.optional("beta1")?,
                decay_rate: args.float("decay_rate", -0.8)?,
                clip_threshold: args.float("clip_threshold", 1.0)?,
                eps1: args.float("eps1", 1e-30)?,
            }),
        })
    }

    /// How many parameter-sized state tensors it keeps (for a memory estimate; Adafactor's
    /// factored moments count as none).
    pub fn state_slots(&self) -> u64 {
        match self {
            Self::Adam { amsgrad, .. } => 2 + u64::from(*amsgrad),
            Self::Sgd { momentum, .. } => u64::from(*momentum != 0.0),
            Self::RmsProp { momentum, centered, .. } => 1 + u64::from(*momentum != 0.0) + u64::from(*centered),
            Self::Adagrad { .. } | Self::Lion { .. } => 1,
            Self::Adafactor(settings) => u64::from(settings.beta1.is_some()),
            // Unknown: counted as Adam's two moments.
            Self::Plugin(_) => 2,
        }
    }

    /// The built-in optimizer; `None` for a plugin's.
    pub fn kind(&self) -> Option<OptimizerKind> {
        Some(match self {
            Self::Adam { decoupled: true, .. } => OptimizerKind::AdamW,
            Self::Adam { decoupled: false, .. } => OptimizerKind::Adam,
            Self::Sgd { .. } => OptimizerKind::Sgd,
            Self::RmsProp { .. } => OptimizerKind::RmsProp,
            Self::Adagrad { .. } => OptimizerKind::Adagrad,
            Self::Lion { .. } => OptimizerKind::Lion,
            Self::Adafactor(_) => OptimizerKind::Adafactor,
            Self::Plugin(_) => return None,
        })
    }
}

/// `optim_args` as Hugging Face writes them: `key=value` pairs separated by commas.
pub fn parse_optim_args(text: &str) -> Result<BTreeMap<String, String>, InputError> {
    let mut pairs = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').ok_or_else(|| {
            InputError::new(format!("optim_args '{text}': '{item}' is not key=value (e.g. momentum=0.9,nesterov=true)"))
        })?;
        pairs.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(pairs)
}

/// Reads the `optim_args` a given optimizer accepts, refusing any other key.
struct OptimArgs<'a> {
    optim: &'a str,
    pairs: BTreeMap<String, String>,
    allowed: &'static [&'static str],
}

impl OptimArgs<'_> {
    fn check(&self) -> Result<(), InputError> {
        for key in self.pairs.keys() {
            if !self.allowed.contains(&key.as_str()) {
                let allowed = if self.allowed.is_empty() { "none".to_owned() } else { self.allowed.join(", ") };
                return Err(InputError::new(format!(
                    "optim_args: '{key}' is not a setting of {} (it takes: {allowed})",
                    self.optim
                )));
            }
        }
        Ok(())
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, InputError> {
        match self.pairs.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| InputError::new(format!("optim_args: {key}={v} is not a number"))),
        }
    }

    fn flag(&self, key: &str) -> Result<bool, InputError> {
        match self.pairs.get(key).map(|v| v.to_lowercase()) {
            None => Ok(false),
            Some(v) if ["true", "1", "yes"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(InputError::new(format!("optim_args: {key}={v} is not true or false"))),
        }
    }

    fn optional(&self, key: &str) -> Result<Option<f64>, InputError> {
        if self.pairs.contains_key(key) {
            self.float(key, 0.0).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The optimizer `spec` describes, over `params`.
/// 16-bit parameters are stepped through float32 masters (see `master`).
pub fn build(spec: &OptimizerSpec, params: Vec<Param>) -> Box<dyn Optimizer> {
    with_master_weights(params, |params| build_plain(spec, params))
}

/// `build` over the parameters, through float32 master weights for 16-bit ones (a plugin
/// optimizer is wrapped as the host's own are).
pub fn with_master_weights(
    params: Vec<Param>,
    build: impl FnOnce(Vec<Param>) -> Box<dyn Optimizer>,
) -> Box<dyn Optimizer> {
    master::MasterWeights::wrap(params, build)
}

fn build_plain(spec: &OptimizerSpec, params: Vec<Param>) -> Box<dyn Optimizer> {
    match spec.clone() {
        OptimizerSpec::Adam { adam, amsgrad, decoupled } => Box::new(adam::Adam::new(params, adam, amsgrad, decoupled)),
        OptimizerSpec::Sgd { momentum, dampening, nesterov } => {
            Box::new(sgd::Sgd::new(params, momentum, dampening, nesterov))
        }
        OptimizerSpec::RmsProp { alpha, eps, momentum, centered } => {
            Box::new(rmsprop::RmsProp::new(params, alpha, eps, momentum, centered))
        }
        OptimizerSpec::Adagrad { lr_decay, eps, initial_accumulator_value } => {
            Box::new(adagrad::Adagrad::new(params, lr_decay, eps, initial_accumulator_value))
        }
        OptimizerSpec::Lion { beta1, beta2 } => Box::new(lion::Lion::new(params, beta1, beta2)),
        OptimizerSpec::Adafactor(settings) => Box::new(adafactor::Adafactor::new(params, settings)),
        OptimizerSpec::Plugin(name) => unreachable!("the trainer builds plugin optimizer {name} itself"),
    }
}

/// Names state tensors of one slot `{parameter}.{slot}`.
fn export_slot(params: &[Param], slot: &str, tensors: &[Tensor], out: &mut Vec<(String, Tensor)>) {
    for (param, tensor) in params.iter().zip(tensors) {
        out.push((format!("{}.{slot}", param.name), tensor.shallow_clone()));
    }
}

/// Copies a saved slot back into `tensors`, checking names and shapes.
fn import_slot(params: &[Param], slot: &str, tensors: &mut [Tensor], state: &OptimizerState) -> Result<(), String> {
    for (param, tensor) in params.iter().zip(tensors.iter_mut()) {
        let name = format!("{}.{slot}", param.name);
        let saved = find(state, &name)?;
        if saved.size() != tensor.size() {
            return Err(format!("optimizer state {name} is {:?}, expected {:?}", saved.size(), tensor.size()));
        }
        tch::no_grad(|| tensor.copy_(saved));
    }
    Ok(())
}

fn find<'a>(state: &'a OptimizerState, name: &str) -> Result<&'a Tensor, String> {
    state.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| format!("optimizer state lacks {name}"))
}

/// The optimizer's step count, saved as `step`.
fn saved_step(state: &OptimizerState) -> Result<i64, String> {
    state.scalars["step"].as_i64().ok_or_else(|| "optimizer state lacks its step count".to_owned())
}

/// Zeroed state tensors like each parameter.
fn zeros_like(params: &[Param]) -> Vec<Tensor> {
    params.iter().map(|p| p.tensor.zeros_like().set_requires_grad(false)).collect()
}

#[cfg(test)]
mod tests;
