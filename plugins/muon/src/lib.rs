//! `muon`: the Muon optimizer for 2-D weight matrices, with AdamW for every other
//! parameter (biases, norms, embeddings), as the Muon authors train with it. Each part
//! follows PyTorch step for step: `torch.optim.Muon` (momentum by lerp, Nesterov, five
//! Newton-Schulz iterations in bfloat16, the "original" or "match_rms_adamw" rate
//! adjustment) and `torch.optim.AdamW`.
//!
//! Select it with `--optim plugin:muon`. The learning rate is the run's (and its
//! schedule's); the weight decay of each parameter is Hugging Face's group's
//! (`weight_decay`, none for biases and norms), decoupled in both parts.
//!
//! Config (all optional): `momentum` (0.95), `nesterov` (true), `ns_steps` (5),
//! `adjust_lr_fn` ("original" or "match_rms_adamw"), `adamw_betas` ([0.9, 0.999]),
//! `adamw_eps` (1e-8), `adamw_params`: name parts whose 2-D parameters still go to AdamW
//! (default embeddings and output heads: embed, wte, wpe, lm_head).

use std::collections::BTreeMap;

use plugin_api::prelude::*;
use plugin_api::serde_json::{json, Value};

/// PyTorch's quintic Newton-Schulz coefficients.
const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.775, 2.0315);
const NS_EPS: f64 = 1e-7;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Muon's momentum.
    momentum: f64,
    /// Nesterov momentum.
    nesterov: bool,
    /// Newton-Schulz iterations.
    ns_steps: i64,
    /// How the rate is scaled per matrix shape: original (sqrt(max(1, rows/cols))) or
    /// match_rms_adamw (0.2 sqrt(max(rows, cols))).
    adjust_lr_fn: String,
    /// AdamW's betas for the parameters Muon does not take.
    adamw_betas: [f64; 2],
    /// AdamW's epsilon.
    adamw_eps: f64,
    /// Parameters whose name contains one of these go to AdamW even when 2-D.
    adamw_params: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            adjust_lr_fn: "original".into(),
            adamw_betas: [0.9, 0.999],
            adamw_eps: 1e-8,
            adamw_params: ["embed", "wte", "wpe", "lm_head"].map(String::from).to_vec(),
        }
    }
}

struct Muon {
    config: Config,
    /// Muon's momentum buffers, by parameter name.
    momentum: BTreeMap<String, Tensor>,
    /// AdamW's moments and step counts, by parameter name.
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
    steps: BTreeMap<String, i64>,
}

impl Muon {
    fn new(config: Config) -> Result<Self, PluginError> {
        if !(config.momentum >= 0.0 && config.momentum < 1.0) {
            return Err(PluginError::config(format!("momentum must be in [0, 1) (got {})", config.momentum)));
        }
        if !(1..100).contains(&config.ns_steps) {
            return Err(PluginError::config(format!("ns_steps must be between 1 and 99 (got {})", config.ns_steps)));
        }
        if !["original", "match_rms_adamw"].contains(&config.adjust_lr_fn.as_str()) {
            return Err(PluginError::config(format!(
                "adjust_lr_fn must be original or match_rms_adamw (got {})",
                config.adjust_lr_fn
            )));
        }
        let [b1, b2] = config.adamw_betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return Err(PluginError::config(format!("adamw_betas must be in [0, 1) (got {:?})", config.adamw_betas)));
        }
        Ok(Self {
            config,
            momentum: BTreeMap::new(),
            exp_avg: BTreeMap::new(),
            exp_avg_sq: BTreeMap::new(),
            steps: BTreeMap::new(),
        })
    }

    fn takes(&self, parameter: &Parameter<'_>) -> bool {
        parameter.tensor.dim() == 2 && !self.config.adamw_params.iter().any(|part| parameter.name.contains(part))
    }

    /// `torch.optim.Muon`'s update of one matrix.
    fn muon_step(&mut self, parameter: &Parameter<'_>, grad: &Tensor, lr: f64) {
        let momentum = self.config.momentum;
        let buffer = self.momentum.entry(parameter.name.to_owned()).or_insert_with(|| grad.zeros_like());
        let _ = buffer.lerp_(grad, 1.0 - momentum);
        let update = if self.config.nesterov { grad.lerp(buffer, momentum) } else { buffer.shallow_clone() };
        let update = newton_schulz(&update, self.config.ns_steps);
        let size = parameter.tensor.size();
        let (rows, cols) = (size[0] as f64, size[1] as f64);
        let adjusted = match self.config.adjust_lr_fn.as_str() {
            "match_rms_adamw" => lr * 0.2 * rows.max(cols).sqrt(),
            _ => lr * (rows / cols).max(1.0).sqrt(),
        };
        let mut tensor = parameter.tensor.shallow_clone();
        let _ = tensor.g_mul_scalar_(1.0 - lr * parameter.weight_decay);
        let _ = tensor.g_add_(&(update.to_kind(tensor.kind()) * -adjusted));
    }

    /// `torch.optim.AdamW`'s update (its single-tensor path).
    fn adamw_step(&mut self, parameter: &Parameter<'_>, grad: &Tensor, lr: f64) {
        let [beta1, beta2] = self.config.adamw_betas;
        let name = parameter.name.to_owned();
        let exp_avg = self.exp_avg.entry(name.clone()).or_insert_with(|| grad.zeros_like());
        let exp_avg_sq = self.exp_avg_sq.entry(name.clone()).or_insert_with(|| grad.zeros_like());
        let step = self.steps.entry(name).or_insert(0);
        *step += 1;
        let mut tensor = parameter.tensor.shallow_clone();
        let _ = tensor.g_mul_scalar_(1.0 - lr * parameter.weight_decay);
        let _ = exp_avg.lerp_(grad, 1.0 - beta1);
        // exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
        let _ = exp_avg_sq.g_mul_scalar_(beta2);
        let _ = exp_avg_sq.addcmul_(&(grad * (1.0 - beta2)), grad);
        let bias_correction1 = 1.0 - beta1.powi(*step as i32);
        let bias_correction2_sqrt = (1.0 - beta2.powi(*step as i32)).sqrt();
        let denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + self.config.adamw_eps;
        let _ = tensor.g_sub_(&((&*exp_avg / denom) * (lr / bias_correction1)));
    }
}

/// PyTorch's `_zeropower_via_newtonschulz`: the orthogonalized update, in bfloat16.
/// PyTorch's bfloat16 `addmm` accumulates in float32 and rounds once; the same sums are
/// made here in float32 from the bfloat16 values, then rounded once.
fn newton_schulz(grad: &Tensor, steps: i64) -> Tensor {
    let (a, b, c) = NS_COEFFICIENTS;
    let round = |t: Tensor| t.to_kind(Kind::BFloat16);
    let wide = |t: &Tensor| t.to_kind(Kind::Float);
    let tall = grad.size()[0] > grad.size()[1];
    let mut x = grad.to_kind(Kind::BFloat16);
    if tall {
        x = x.tr();
    }
    x = &x / x.norm().clamp_min(NS_EPS);
    for _ in 0..steps {
        let xf = wide(&x);
        let gram = wide(&round(xf.matmul(&xf.tr())));
        let gram_update = wide(&round(gram.matmul(&gram) * c + &gram * b));
        x = round(&xf * a + gram_update.matmul(&xf));
    }
    if tall {
        x = x.tr();
    }
    x
}

impl Optimizer for Muon {
    fn step(&mut self, parameters: &[Parameter<'_>], lr: f64) -> Result<(), PluginError> {
        for parameter in parameters {
            let grad = parameter.tensor.grad();
            if !grad.defined() {
                continue;
            }
            if self.takes(parameter) {
                self.muon_step(parameter, &grad, lr);
            } else {
                self.adamw_step(parameter, &grad, lr);
            }
        }
        Ok(())
    }

    fn state(&self) -> (Value, Tensors) {
        let mut tensors = Tensors::new();
        for (slot, map) in
            [("momentum_buffer", &self.momentum), ("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)]
        {
            for (name, tensor) in map {
                tensors.insert(format!("{name}.{slot}"), tensor.shallow_clone());
            }
        }
        (json!({ "step": self.steps }), tensors)
    }

    fn load_state(&mut self, state: Value, tensors: Tensors) -> Result<(), PluginError> {
        self.steps = plugin_api::serde_json::from_value(state["step"].clone())
            .map_err(|e| PluginError::new(format!("saved muon state: step: {e}")))?;
        for (name, tensor) in tensors.iter() {
            let (parameter, slot) = name
                .rsplit_once('.')
                .ok_or_else(|| PluginError::new(format!("saved muon state: unexpected tensor {name}")))?;
            let map = match slot {
                "momentum_buffer" => &mut self.momentum,
                "exp_avg" => &mut self.exp_avg,
                "exp_avg_sq" => &mut self.exp_avg_sq,
                _ => return Err(PluginError::new(format!("saved muon state: unexpected tensor {name}"))),
            };
            // A copy: the host's tensors are read from the checkpoint for this call.
            map.insert(parameter.to_owned(), tensor.copy());
        }
        Ok(())
    }
}

export_plugin! {
    optimizers: { "muon" => Muon::new },
}
