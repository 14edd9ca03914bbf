//! Adafactor as Hugging Face's `transformers.optimization.Adafactor`, set up as its Trainer
//! does (`scale_parameter=False, relative_step=False`: the schedule's learning rate is used
//! as it is). Matrices keep factored second moments (a row and a column vector).

use tch::{Kind, Tensor};

use super::{find, saved_step, Optimizer, OptimizerState, Param};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// First-moment decay; `None` keeps no first moment (HF's default).
    pub beta1: Option<f64>,
    pub decay_rate: f64,
    pub clip_threshold: f64,
    /// Added to squared gradients (HF's `eps[0]`; its `eps[1]` only serves
    /// `scale_parameter`, which the Trainer turns off).
    pub eps1: f64,
}

enum SecondMoment {
    Factored { row: Tensor, col: Tensor },
    Full(Tensor),
}

pub struct Adafactor {
    params: Vec<Param>,
    second: Vec<SecondMoment>,
    first: Vec<Option<Tensor>>,
    step: i64,
    settings: Settings,
}

impl Adafactor {
    pub fn new(params: Vec<Param>, settings: Settings) -> Self {
        let second = params
            .iter()
            .map(|p| {
                let shape = p.tensor.size();
                let options = (Kind::Float, p.tensor.device());
                if shape.len() >= 2 {
                    let row = Tensor::zeros(&shape[..shape.len() - 1], options);
                    let mut col_shape = shape[..shape.len() - 2].to_vec();
                    col_shape.push(shape[shape.len() - 1]);
                    SecondMoment::Factored { row, col: Tensor::zeros(&col_shape, options) }
                } else {
                    SecondMoment::Full(Tensor::zeros(&shape, options))
                }
            })
            .collect();
        let first =
            params.iter().map(|p| settings.beta1.map(|_| p.tensor.zeros_like().set_requires_grad(false))).collect();
        Self { params, second, first, step: 0, settings }
    }
}

/// Root mean square of a tensor, as a 0-d tensor.
fn rms(t: &Tensor) -> Tensor {
    t.norm() / (t.numel() as f64).sqrt()
}

impl Optimizer for Adafactor {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        Ok({
            let mut tensors = Vec::new();
            for ((param, second), first) in self.params.iter().zip(&self.second).zip(&self.first) {
                match second {
                    SecondMoment::Factored { row, col } => {
                        tensors.push((format!("{}.exp_avg_sq_row", param.name), row.shallow_clone()));
                        tensors.push((format!("{}.exp_avg_sq_col", param.name), col.shallow_clone()));
                    }
                    SecondMoment::Full(v) => tensors.push((format!("{}.exp_avg_sq", param.name), v.shallow_clone())),
                }
                if let Some(first) = first {
                    tensors.push((format!("{}.exp_avg", param.name), first.shallow_clone()));
                }
            }
            OptimizerState { tensors, scalars: serde_json::json!({ "step": self.step }) }
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        let copy = |name: String, into: &mut Tensor| -> Result<(), String> {
            let saved = find(state, &name)?;
            if saved.size() != into.size() {
                return Err(format!("optimizer state {name} is {:?}, expected {:?}", saved.size(), into.size()));
            }
            tch::no_grad(|| into.copy_(saved));
            Ok(())
        };
        for ((param, second), first) in self.params.iter().zip(&mut self.second).zip(&mut self.first) {
            match second {
                SecondMoment::Factored { row, col } => {
                    copy(format!("{}.exp_avg_sq_row", param.name), row)?;
                    copy(format!("{}.exp_avg_sq_col", param.name), col)?;
                }
                SecondMoment::Full(v) => copy(format!("{}.exp_avg_sq", param.name), v)?,
            }
            if let Some(first) = first {
                copy(format!("{}.exp_avg", param.name), first)?;
            }
        }
        self.step = saved_step(state)?;
        Ok(())
    }

    fn step(&mut self, lr: f64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let s = self.settings;
        let beta2t = 1.0 - (self.step as f64).powf(s.decay_rate);
        for (i, param) in self.params.iter_mut().enumerate() {
            let Some(grad) = param.grad() else { continue };
            let grad = grad.to_kind(Kind::Float);
            let squared = &grad * &grad + s.eps1;
            let mut update = match &mut self.second[i] {
                SecondMoment::Factored { row, col } => {
                    let _ = row.g_mul_scalar_(beta2t);
                    let _ = row.g_add_(&(squared.mean_dim(-1, false, Kind::Float) * (1.0 - beta2t)));
                    let _ = col.g_mul_scalar_(beta2t);
                    let _ = col.g_add_(&(squared.mean_dim(-2, false, Kind::Float) * (1.0 - beta2t)));
                    let r_factor = (&*row / row.mean_dim(-1, true, Kind::Float)).rsqrt().unsqueeze(-1);
                    let c_factor = col.unsqueeze(-2).rsqrt();
                    r_factor * c_factor * &grad
                }
                SecondMoment::Full(v) => {
                    let _ = v.g_mul_scalar_(beta2t);
                    let _ = v.g_add_(&(squared * (1.0 - beta2t)));
                    v.rsqrt() * &grad
                }
            };
            let scale = (rms(&update) / s.clip_threshold).clamp_min(1.0);
            update = update / scale * lr;
            if let (Some(beta1), Some(first)) = (s.beta1, &mut self.first[i]) {
                let _ = first.g_mul_scalar_(beta1);
                let _ = first.g_add_(&(&update * (1.0 - beta1)));
                update = first.shallow_clone();
            }
            if param.weight_decay != 0.0 {
                let decay = &param.tensor * (-param.weight_decay * lr);
                let _ = param.tensor.g_add_(&decay);
            }
            let _ = param.tensor.g_sub_(&update.to_kind(param.tensor.kind()));
        }
        Ok(())
    }
}
