//! Learning-rate schedules: every Hugging Face `lr_scheduler_type`, with the formulas of
//! `transformers.optimization` and the keyword arguments of `lr_scheduler_kwargs`.

use std::collections::BTreeMap;
use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use crate::error::InputError;

/// The learning-rate schedule (HF `lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum SchedulerType {
    Linear,
    Cosine,
    CosineWithRestarts,
    Polynomial,
    Constant,
    ConstantWithWarmup,
    InverseSqrt,
    ReduceLrOnPlateau,
    CosineWithMinLr,
    CosineWarmupWithMinLr,
    WarmupStableDecay,
    /// transformers 5's `GreedyLR`: raises the rate while the metric keeps improving,
    /// lowers it on a plateau.
    Greedy,
}

impl SchedulerType {
    /// The name as HF spells it.
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    /// Whether the evaluation metric drives the rate (HF steps these with it).
    pub fn follows_metric(self) -> bool {
        matches!(self, Self::ReduceLrOnPlateau | Self::Greedy)
    }
}

/// `lr_scheduler_type` as the arguments give it: one of HF's schedules, or
/// `plugin:NAME`, a schedule component of a loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LrSchedulerType {
    Builtin(SchedulerType),
    Plugin(String),
}

impl LrSchedulerType {
    pub fn name(&self) -> String {
        match self {
            Self::Builtin(kind) => kind.name(),
            Self::Plugin(name) => format!("plugin:{name}"),
        }
    }

    pub fn follows_metric(&self) -> bool {
        matches!(self, Self::Builtin(kind) if kind.follows_metric())
    }
}

impl std::str::FromStr for LrSchedulerType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("plugin:") {
            return match name.is_empty() {
                true => Err("plugin: needs the schedule component's name (plugin:NAME)".to_owned()),
                false => Ok(Self::Plugin(name.to_owned())),
            };
        }
        <SchedulerType as clap::ValueEnum>::from_str(text, false).map(Self::Builtin).map_err(|_| {
            let names: Vec<String> =
                <SchedulerType as clap::ValueEnum>::value_variants().iter().map(|k| k.name()).collect();
            format!("'{text}' is not a schedule: one of {}, or plugin:NAME", names.join(", "))
        })
    }
}

impl Serialize for LrSchedulerType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for LrSchedulerType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `lr_scheduler_kwargs`: a table in TOML, a JSON object on the command line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct SchedulerKwargs(pub BTreeMap<String, serde_json::Value>);

impl<'de> Deserialize<'de> for SchedulerKwargs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Table(BTreeMap<String, serde_json::Value>),
            Json(String),
        }
        match Form::deserialize(deserializer)? {
            Form::Table(map) => Ok(Self(map)),
            Form::Json(text) if text.trim().is_empty() => Ok(Self::default()),
            Form::Json(text) => serde_json::from_str(&text).map(Self).map_err(|e| {
                serde::de::Error::custom(format!("not a JSON object of scheduler settings ({e}): {text}"))
            }),
        }
    }
}

/// torch's `ReduceLROnPlateau`, which Hugging Face steps with the evaluation metric.
#[derive(Debug, Clone, PartialEq)]
struct Plateau {
    maximize: bool,
    factor: f64,
    patience: i64,
    threshold: f64,
    relative: bool,
    cooldown: i64,
    min_lr: f64,
    eps: f64,
    best: f64,
    bad_epochs: i64,
    cooldown_left: i64,
}

/// Whether `value` beats `best` by more than `threshold` (a share of `best` when
/// `relative`): torch's ReduceLROnPlateau rule, which GreedyLR shares.
fn improves(value: f64, best: f64, maximize: bool, relative: bool, threshold: f64) -> bool {
    match (maximize, relative) {
        (false, true) => value < best * (1.0 - threshold),
        (false, false) => value < best - threshold,
        (true, true) => value > best * (1.0 + threshold),
        (true, false) => value > best + threshold,
    }
}

impl Plateau {
    fn is_better(&self, value: f64) -> bool {
        improves(value, self.best, self.maximize, self.relative, self.threshold)
    }
}

/// transformers' `GreedyLR`, stepped with the evaluation metric as `ReduceLROnPlateau`:
/// the rate is divided by `factor` after more than `patience` improving evaluations and
/// multiplied by it after more than `patience` others, within [min_lr, max_lr]; after
/// `reset_start` plateaus at min_lr it starts over.
#[derive(Debug, Clone, PartialEq)]
struct Greedy {
    maximize: bool,
    factor: f64,
    patience: i64,
    threshold: f64,
    relative: bool,
    cooldown: i64,
    warmup: i64,
    min_lr: f64,
    max_lr: f64,
    eps: f64,
    /// The streaming average's window, when `smooth`.
    window: Option<usize>,
    reset_start: i64,
    // What changes as metrics come:
    best: f64,
    bad_epochs: i64,
    good_epochs: i64,
    cooldown_left: i64,
    warmup_left: i64,
    resets_left: i64,
    recent: Vec<f64>,
}

impl Greedy {
    fn is_better(&self, value: f64) -> bool {
        improves(value, self.best, self.maximize, self.relative, self.threshold)
    }

    fn worst(&self) -> f64 {
        if self.maximize {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }
    }

    /// One evaluation's metric; returns the new rate.
    fn step(&mut self, metric: f64, lr: f64, initial_lr: f64) -> f64 {
        let mut current = metric;
        if let Some(window) = self.window {
            self.recent.push(metric);
            if self.recent.len() > window {
                self.recent.remove(0);
            }
            current = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        }
        let mut lr = lr;
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            (self.bad_epochs, self.good_epochs) = (0, 0);
        } else if self.warmup_left > 0 {
            self.warmup_left -= 1;
            (self.bad_epochs, self.good_epochs) = (0, 0);
        } else {
            if self.is_better(current) {
                self.best = current;
                self.bad_epochs = 0;
                self.good_epochs += 1;
            } else {
                self.bad_epochs += 1;
                self.good_epochs = 0;
            }
            if self.good_epochs > self.patience {
                let raised = (lr / self.factor).min(self.max_lr);
                if raised - lr > self.eps {
                    lr = raised;
                }
                self.resets_left = self.reset_start;
                self.warmup_left = self.warmup;
                self.good_epochs = 0;
            } else if self.bad_epochs > self.patience {
                let lowered = (lr * self.factor).max(self.min_lr);
                if lr - lowered > self.eps {
                    lr = lowered;
                }
                if lr <= self.min_lr {
                    self.resets_left -= 1;
                    if self.resets_left <= 0 {
                        // Start over (GreedyLR's _reset); the cooldown below still follows.
                        lr = initial_lr;
                        self.best = self.worst();
                        (self.good_epochs, self.warmup_left) = (0, 0);
                        self.resets_left = self.reset_start;
                        self.recent.clear();
                    }
                }
                self.cooldown_left = self.cooldown;
                self.bad_epochs = 0;
            }
        }
        lr
    }
}

/// The formula of a schedule, with its settings from the kwargs. Settings whose default
/// depends on the run's length are `None` until the scheduler is made.
#[derive(Debug, Clone, PartialEq)]
enum Formula {
    Linear,
    Cosine {
        num_cycles: f64,
    },
    CosineWithRestarts {
        num_cycles: f64,
    },
    Polynomial {
        lr_end: f64,
        power: f64,
    },
    Constant,
    ConstantWithWarmup,
    InverseSqrt {
        timescale: Option<f64>,
    },
    Plateau,
    Greedy,
    CosineWithMinLr {
        num_cycles: f64,
        min_lr_rate: f64,
    },
    CosineWarmupWithMinLr {
        num_cycles: f64,
        min_lr_rate: f64,
        warmup_lr_rate: Option<f64>,
    },
    WarmupStableDecay {
        stable: Option<f64>,
        decay: f64,
        warmup_type: Curve,
        decay_type: Curve,
        min_lr_ratio: f64,
        num_cycles: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Curve {
    Linear,
    Cosine,
    OneMinusSqrt,
}

/// A schedule as the arguments ask for it, checked, before the run's length is known.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    base_lr: f64,
    formula: Formula,
    plateau: Option<Plateau>,
    greedy: Option<Greedy>,
}

/// The learning rate at every optimizer step of a run.
#[derive(Debug, Clone)]
pub struct Scheduler {
    base_lr: f64,
    warmup: f64,
    total: f64,
    formula: Formula,
    plateau: Option<Plateau>,
    greedy: Option<Greedy>,
    /// The rate of a metric-driven schedule (plateau, greedy).
    plateau_lr: f64,
}

/// Reads one scheduler's kwargs, refusing keys it does not take.
struct Kwargs<'a> {
    kind: &'a str,
    map: &'a BTreeMap<String, serde_json::Value>,
}

impl Kwargs<'_> {
    fn allow(&self, keys: &[&str]) -> Result<(), InputError> {
        for key in self.map.keys() {
            if !keys.contains(&key.as_str()) {
                let takes = if keys.is_empty() { "none".to_owned() } else { keys.join(", ") };
                return Err(InputError::new(format!(
                    "lr_scheduler_kwargs: '{key}' is not a setting of {} (it takes: {takes})",
                    self.kind
                )));
            }
        }
        Ok(())
    }

    fn number(&self, key: &str) -> Result<Option<f64>, InputError> {
        match self.map.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| InputError::new(format!("lr_scheduler_kwargs: {key} must be a number (got {value})"))),
        }
    }

    fn text(&self, key: &str, default: &str) -> Result<String, InputError> {
        match self.map.get(key) {
            None => Ok(default.to_owned()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(value) => Err(InputError::new(format!("lr_scheduler_kwargs: {key} must be a string (got {value})"))),
        }
    }

    fn maximize(&self) -> Result<bool, InputError> {
        match self.text("mode", "min")?.as_str() {
            "min" => Ok(false),
            "max" => Ok(true),
            other => Err(InputError::new(format!("lr_scheduler_kwargs: mode '{other}' is not min or max"))),
        }
    }

    fn relative(&self, default: &str) -> Result<bool, InputError> {
        match self.text("threshold_mode", default)?.as_str() {
            "rel" => Ok(true),
            "abs" => Ok(false),
            other => Err(InputError::new(format!("lr_scheduler_kwargs: threshold_mode '{other}' is not rel or abs"))),
        }
    }

    fn curve(&self, key: &str) -> Result<Curve, InputError> {
        match self.text(key, if key == "warmup_type" { "linear" } else { "cosine" })?.as_str() {
            "linear" => Ok(Curve::Linear),
            "cosine" => Ok(Curve::Cosine),
            "1-sqrt" => Ok(Curve::OneMinusSqrt),
            other => Err(InputError::new(format!(
                "lr_scheduler_kwargs: {key} '{other}' is not one of: linear, cosine, 1-sqrt"
            ))),
        }
    }

    /// `min_lr` or `min_lr_rate`, exactly one, as a rate of the peak learning rate.
    fn min_lr_rate(&self, base_lr: f64) -> Result<f64, InputError> {
        match (self.number("min_lr")?, self.number("min_lr_rate")?) {
            (Some(_), Some(_)) => Err(InputError::new("lr_scheduler_kwargs: give min_lr or min_lr_rate, not both")),
            (Some(min_lr), None) => Ok(min_lr / base_lr),
            (None, Some(rate)) => Ok(rate),
            (None, None) => {
                Err(InputError::new(format!("lr_scheduler_kwargs: {} needs min_lr or min_lr_rate", self.kind)))
            }
        }
    }
}

impl ScheduleSpec {
    /// The schedule of `kind` peaking at `base_lr`, with HF's `lr_scheduler_kwargs`; a
    /// setting it does not take, or a value out of range, is an error naming it.
    pub fn new(kind: SchedulerType, base_lr: f64, kwargs: &SchedulerKwargs) -> Result<Self, InputError> {
        let name = kind.name();
        let k = Kwargs { kind: &name, map: &kwargs.0 };
        let mut plateau = None;
        let mut greedy = None;
        let formula = match kind {
            SchedulerType::Linear => {
                k.allow(&[])?;
                Formula::Linear
            }
            SchedulerType::Cosine => {
                k.allow(&["num_cycles"])?;
                Formula::Cosine { num_cycles: k.number("num_cycles")?.unwrap_or(0.5) }
            }
            SchedulerType::CosineWithRestarts => {
                k.allow(&["num_cycles"])?;
                Formula::CosineWithRestarts { num_cycles: k.number("num_cycles")?.unwrap_or(1.0) }
            }
            SchedulerType::Polynomial => {
                k.allow(&["lr_end", "power"])?;
                let lr_end = k.number("lr_end")?.unwrap_or(1e-7);
                if base_lr.is_nan() || lr_end.is_nan() || base_lr <= lr_end {
                    return Err(InputError::new(format!(
                        "lr_scheduler_kwargs: lr_end ({lr_end}) must be smaller than learning_rate ({base_lr})"
                    )));
                }
                Formula::Polynomial { lr_end, power: k.number("power")?.unwrap_or(1.0) }
            }
            SchedulerType::Constant => {
                k.allow(&[])?;
                Formula::Constant
            }
            SchedulerType::ConstantWithWarmup => {
                k.allow(&[])?;
                Formula::ConstantWithWarmup
            }
            SchedulerType::InverseSqrt => {
                k.allow(&["timescale"])?;
                Formula::InverseSqrt { timescale: k.number("timescale")? }
            }
            SchedulerType::ReduceLrOnPlateau => {
                k.allow(&["mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps"])?;
                let (maximize, relative) = (k.maximize()?, k.relative("rel")?);
                let factor = k.number("factor")?.unwrap_or(0.1);
                if !(0.0..1.0).contains(&factor) {
                    return Err(InputError::new(format!(
                        "lr_scheduler_kwargs: factor must be in [0, 1) (got {factor})"
                    )));
                }
                plateau = Some(Plateau {
                    maximize,
                    factor,
                    patience: k.number("patience")?.unwrap_or(10.0) as i64,
                    threshold: k.number("threshold")?.unwrap_or(1e-4),
                    relative,
                    cooldown: k.number("cooldown")?.unwrap_or(0.0) as i64,
                    min_lr: k.number("min_lr")?.unwrap_or(0.0),
                    eps: k.number("eps")?.unwrap_or(1e-8),
                    best: if maximize { f64::NEG_INFINITY } else { f64::INFINITY },
                    bad_epochs: 0,
                    cooldown_left: 0,
                });
                Formula::Plateau
            }
            SchedulerType::Greedy => {
                k.allow(&[
                    "mode",
                    "factor",
                    "patience",
                    "threshold",
                    "threshold_mode",
                    "cooldown",
                    "warmup",
                    "min_lr",
                    "max_lr",
                    "eps",
                    "verbose",
                    "smooth",
                    "window_size",
                    "reset_start",
                ])?;
                let factor = k.number("factor")?.unwrap_or(0.95);
                if !(factor > 0.0 && factor < 1.0) {
                    return Err(InputError::new(format!(
                        "lr_scheduler_kwargs: factor must be in (0, 1) (got {factor})"
                    )));
                }
                let smooth = matches!(k.map.get("smooth"), Some(serde_json::Value::Bool(true)));
                let window = k.number("window_size")?.unwrap_or(50.0).max(1.0) as usize;
                let maximize = k.maximize()?;
                let reset_start = k.number("reset_start")?.unwrap_or(500.0) as i64;
                greedy = Some(Greedy {
                    maximize,
                    factor,
                    patience: k.number("patience")?.unwrap_or(10.0) as i64,
                    threshold: k.number("threshold")?.unwrap_or(1e-6),
                    relative: k.relative("abs")?,
                    cooldown: k.number("cooldown")?.unwrap_or(0.0) as i64,
                    warmup: k.number("warmup")?.unwrap_or(0.0) as i64,
                    min_lr: k.number("min_lr")?.unwrap_or(1e-3),
                    max_lr: k.number("max_lr")?.unwrap_or(1.0),
                    eps: k.number("eps")?.unwrap_or(1e-8),
                    window: smooth.then_some(window),
                    reset_start,
                    best: if maximize { f64::NEG_INFINITY } else { f64::INFINITY },
                    bad_epochs: 0,
                    good_epochs: 0,
                    cooldown_left: 0,
                    warmup_left: 0,
                    resets_left: reset_start,
                    recent: Vec::new(),
                });
                Formula::Greedy
            }
            SchedulerType::CosineWithMinLr => {
                k.allow(&["num_cycles", "min_lr", "min_lr_rate"])?;
                Formula::CosineWithMinLr {
                    num_cycles: k.number("num_cycles")?.unwrap_or(0.5),
                    min_lr_rate: k.min_lr_rate(base_lr)?,
                }
            }
            SchedulerType::CosineWarmupWithMinLr => {
                k.allow(&["num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"])?;
                Formula::CosineWarmupWithMinLr {
                    num_cycles: k.number("num_cycles")?.unwrap_or(0.5),
                    min_lr_rate: k.min_lr_rate(base_lr)?,
                    warmup_lr_rate: k.number("warmup_lr_rate")?,
                }
            }
            SchedulerType::WarmupStableDecay => {
                k.allow(&[
                    "num_decay_steps",
                    "num_stable_steps",
                    "warmup_type",
                    "decay_type",
                    "min_lr_ratio",
                    "num_cycles",
                ])?;
                let decay = k
                    .number("num_decay_steps")?
                    .ok_or_else(|| InputError::new("lr_scheduler_kwargs: warmup_stable_decay needs num_decay_steps"))?;
                Formula::WarmupStableDecay {
                    stable: k.number("num_stable_steps")?,
                    decay,
                    warmup_type: k.curve("warmup_type")?,
                    decay_type: k.curve("decay_type")?,
                    min_lr_ratio: k.number("min_lr_ratio")?.unwrap_or(0.0),
                    num_cycles: k.number("num_cycles")?.unwrap_or(0.5),
                }
            }
        };
        Ok(Self { base_lr, formula, plateau, greedy })
    }
}

impl Scheduler {
    /// The schedule for `total` optimizer steps with `warmup` warm-up steps.
    pub fn new(spec: &ScheduleSpec, warmup: i64, total: i64) -> Self {
        Self {
            base_lr: spec.base_lr,
            warmup: warmup as f64,
            total: total as f64,
            formula: spec.formula.clone(),
            plateau: spec.plateau.clone(),
            greedy: spec.greedy.clone(),
            plateau_lr: spec.base_lr,
        }
    }

    /// The learning rate for the update after `step` optimizer steps.
    pub fn lr(&self, step: i64) -> f64 {
        match self.formula {
            Formula::Plateau | Formula::Greedy => self.plateau_lr,
            _ => self.base_lr * self.lambda(step as f64),
        }
    }

    /// What a checkpoint keeps: a metric-driven schedule's state (the others have none).
    pub fn state(&self) -> serde_json::Value {
        match (&self.plateau, &self.greedy) {
            (Some(p), _) => serde_json::json!({
                "lr": self.plateau_lr,
                "best": p.best,
                "num_bad_epochs": p.bad_epochs,
                "cooldown_counter": p.cooldown_left,
            }),
            (_, Some(g)) => serde_json::json!({
                "lr": self.plateau_lr,
                "best": g.best,
                "num_bad_epochs": g.bad_epochs,
                "num_good_epochs": g.good_epochs,
                "cooldown_counter": g.cooldown_left,
                "warmup_counter": g.warmup_left,
                "reset_start": g.resets_left,
                "values": g.recent,
            }),
            _ => serde_json::json!({}),
        }
    }

    /// Restores what `state` returned.
    pub fn load_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let number = |key: &str| state[key].as_f64().ok_or_else(|| format!("scheduler state lacks {key}"));
        if let Some(g) = &mut self.greedy {
            self.plateau_lr = number("lr")?;
            g.best = state["best"].as_f64().unwrap_or(g.worst());
            g.bad_epochs = number("num_bad_epochs")? as i64;
            g.good_epochs = number("num_good_epochs")? as i64;
            g.cooldown_left = number("cooldown_counter")? as i64;
            g.warmup_left = number("warmup_counter")? as i64;
            g.resets_left = number("reset_start")? as i64;
            g.recent =
                state["values"].as_array().map(|v| v.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
            return Ok(());
        }
        let Some(p) = &mut self.plateau else { return Ok(()) };
        self.plateau_lr = number("lr")?;
        // JSON has no infinity: a plateau that saw no metric yet saves its best as null.
        p.best = state["best"].as_f64().unwrap_or(if p.maximize { f64::NEG_INFINITY } else { f64::INFINITY });
        p.bad_epochs = number("num_bad_epochs")? as i64;
        p.cooldown_left = number("cooldown_counter")? as i64;
        Ok(())
    }

    /// Feeds an evaluation metric to `reduce_lr_on_plateau` and `greedy` (the others
    /// ignore it).
    pub fn on_metric(&mut self, value: f64) {
        if let Some(g) = &mut self.greedy {
            self.plateau_lr = g.step(value, self.plateau_lr, self.base_lr);
            return;
        }
        let Some(p) = &mut self.plateau else { return };
        if p.is_better(value) {
            p.best = value;
            p.bad_epochs = 0;
        } else {
            p.bad_epochs += 1;
        }
        if p.cooldown_left > 0 {
            p.cooldown_left -= 1;
            p.bad_epochs = 0;
        }
        if p.bad_epochs > p.patience {
            let new_lr = (self.plateau_lr * p.factor).max(p.min_lr);
            if self.plateau_lr - new_lr > p.eps {
                self.plateau_lr = new_lr;
            }
            p.cooldown_left = p.cooldown;
            p.bad_epochs = 0;
        }
    }

    /// The multiplier of the peak rate (HF's `lr_lambda`).
    fn lambda(&self, step: f64) -> f64 {
        let (warmup, total) = (self.warmup, self.total);
        let warming = step < warmup;
        let warmup_ramp = step / warmup.max(1.0);
        let progress = (step - warmup) / (total - warmup).max(1.0);
        match self.formula {
            Formula::Constant | Formula::Plateau | Formula::Greedy => 1.0,
            Formula::ConstantWithWarmup => {
                if warming {
                    warmup_ramp
                } else {
                    1.0
                }
            }
            Formula::Linear => {
                if warming {
                    warmup_ramp
                } else {
                    ((total - step) / (total - warmup).max(1.0)).max(0.0)
                }
            }
            Formula::Cosine { num_cycles } => {
                if warming {
                    warmup_ramp
                } else {
                    (0.5 * (1.0 + (PI * num_cycles * 2.0 * progress).cos())).max(0.0)
                }
            }
            Formula::CosineWithRestarts { num_cycles } => {
                if warming {
                    warmup_ramp
                } else if progress >= 1.0 {
                    0.0
                } else {
                    (0.5 * (1.0 + (PI * ((num_cycles * progress) % 1.0)).cos())).max(0.0)
                }
            }
            Formula::Polynomial { lr_end, power } => {
                if warming {
                    warmup_ramp
                } else if step > total {
                    lr_end / self.base_lr
                } else {
                    let remaining = 1.0 - (step - warmup) / (total - warmup);
                    ((self.base_lr - lr_end) * remaining.powf(power) + lr_end) / self.base_lr
                }
            }
            Formula::InverseSqrt { timescale } => {
                // HF's default timescale: the warm-up steps, or 10 000 without warm-up.
                let timescale = timescale.unwrap_or(if warmup > 0.0 { warmup } else { 10_000.0 });
                if warming {
                    warmup_ramp
                } else {
                    1.0 / ((step + timescale - warmup) / timescale).sqrt()
                }
            }
            Formula::CosineWithMinLr { num_cycles, min_lr_rate } => {
                if warming {
                    warmup_ramp
                } else {
                    let factor = 0.5 * (1.0 + (PI * num_cycles * 2.0 * progress).cos());
                    (factor * (1.0 - min_lr_rate) + min_lr_rate).max(0.0)
                }
            }
            Formula::CosineWarmupWithMinLr { num_cycles, min_lr_rate, warmup_lr_rate } => {
                if warming {
                    match warmup_lr_rate {
                        None => (step + 1.0) / warmup.max(1.0),
                        Some(rate) => rate + (1.0 - rate) * step / (warmup - 1.0).max(1.0),
                    }
                } else {
                    let progress = (step - warmup + 1.0) / (total - warmup).max(1.0);
                    let factor = 0.5 * (1.0 + (PI * num_cycles * 2.0 * progress).cos());
                    (factor * (1.0 - min_lr_rate) + min_lr_rate).max(0.0)
                }
            }
            Formula::WarmupStableDecay { stable, decay, warmup_type, decay_type, min_lr_ratio, num_cycles } => {
                // HF's default: stable for whatever warm-up and decay leave.
                let stable = stable.unwrap_or(total - warmup - decay);
                if warming {
                    let p = warmup_ramp;
                    let factor = match warmup_type {
                        Curve::Linear => p,
                        Curve::Cosine => 0.5 * (1.0 - (PI * p).cos()),
                        Curve::OneMinusSqrt => 1.0 - (1.0 - p).sqrt(),
                    };
                    (factor * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
                } else if step < warmup + stable {
                    1.0
                } else if step < warmup + stable + decay {
                    let p = (step - warmup - stable) / decay.max(1.0);
                    let factor = match decay_type {
                        Curve::Linear => 1.0 - p,
                        Curve::Cosine => 0.5 * (1.0 + (PI * num_cycles * 2.0 * p).cos()),
                        Curve::OneMinusSqrt => 1.0 - p.sqrt(),
                    };
                    (factor * (1.0 - min_lr_ratio) + min_lr_ratio).max(0.0)
                } else {
                    min_lr_ratio
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests/fixtures/schedules.json: learning rates from HF's get_scheduler, step by step
    /// (scripts/fixtures/schedule_reference.py).
    #[test]
    fn schedules_match_hugging_face() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../../../tests/fixtures/schedules.json")).unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let kind: SchedulerType = serde_json::from_value(case["type"].clone()).unwrap();
            let kwargs: SchedulerKwargs = serde_json::from_value(case["kwargs"].clone()).unwrap();
            let base = case["lr"].as_f64().unwrap();
            let spec = ScheduleSpec::new(kind, base, &kwargs).unwrap();
            let mut scheduler =
                Scheduler::new(&spec, case["warmup"].as_i64().unwrap(), case["total"].as_i64().unwrap());
            let metrics = case["metrics"].as_array();
            for (step, want) in case["lrs"].as_array().unwrap().iter().enumerate() {
                let want = want.as_f64().unwrap();
                let got = scheduler.lr(step as i64);
                assert!(
                    (got - want).abs() <= 1e-12 * base.max(1.0),
                    "{}: step {step}: {got} vs HF {want}",
                    case["name"]
                );
                if let Some(metrics) = metrics {
                    scheduler.on_metric(metrics[step].as_f64().unwrap());
                }
            }
        }
    }

    #[test]
    fn bad_kwargs_are_clear_errors() {
        let kwargs = |json: &str| serde_json::from_str::<SchedulerKwargs>(json).unwrap();
        let err = |kind, json: &str| ScheduleSpec::new(kind, 1e-3, &kwargs(json)).unwrap_err().to_string();
        assert_eq!(
            err(SchedulerType::Cosine, r#"{"num_cycle": 2}"#),
            "lr_scheduler_kwargs: 'num_cycle' is not a setting of cosine (it takes: num_cycles)"
        );
        assert_eq!(
            err(SchedulerType::CosineWithMinLr, "{}"),
            "lr_scheduler_kwargs: cosine_with_min_lr needs min_lr or min_lr_rate"
        );
        assert_eq!(
            err(SchedulerType::WarmupStableDecay, "{}"),
            "lr_scheduler_kwargs: warmup_stable_decay needs num_decay_steps"
        );
        assert_eq!(
            err(SchedulerType::Polynomial, r#"{"lr_end": 0.01}"#),
            "lr_scheduler_kwargs: lr_end (0.01) must be smaller than learning_rate (0.001)"
        );
    }
}

/// The steps a schedule runs over, known once the data is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPlan {
    pub base_lr: f64,
    pub warmup_steps: i64,
    pub max_steps: i64,
}

/// A learning-rate schedule as the trainer drives it: the built-in [`Scheduler`], or a
/// plugin's through its adapter.
pub trait LrSchedule {
    /// The rate for the update after `step` optimizer steps.
    fn lr(&mut self, step: i64) -> anyhow::Result<f64>;
    /// An evaluation's metric_for_best_model (reduce_lr_on_plateau, greedy).
    fn on_metric(&mut self, value: f64) -> anyhow::Result<()>;
    /// What a checkpoint keeps.
    fn state(&mut self) -> anyhow::Result<serde_json::Value>;
    fn load_state(&mut self, state: &serde_json::Value) -> anyhow::Result<()>;
}

/// Makes the run's schedule once its steps are known (a plugin's schedule is chosen before).
pub trait ScheduleFactory {
    fn make(self: Box<Self>, plan: StepPlan) -> Box<dyn LrSchedule>;
}

impl LrSchedule for Scheduler {
    fn lr(&mut self, step: i64) -> anyhow::Result<f64> {
        Ok(Scheduler::lr(self, step))
    }

    fn on_metric(&mut self, value: f64) -> anyhow::Result<()> {
        Scheduler::on_metric(self, value);
        Ok(())
    }

    fn state(&mut self) -> anyhow::Result<serde_json::Value> {
        Ok(Scheduler::state(self))
    }

    fn load_state(&mut self, state: &serde_json::Value) -> anyhow::Result<()> {
        Scheduler::load_state(self, state).map_err(anyhow::Error::msg)
    }
}
