//! Adam and AdamW, as `torch.optim.Adam` / `torch.optim.AdamW` (single-tensor path).

use tch::Tensor;

use super::{zeros_like, AdamSettings, Optimizer, Param};

pub struct Adam {
    params: Vec<Param>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    max_exp_avg_sq: Option<Vec<Tensor>>,
    step: i64,
    settings: AdamSettings,
    /// AdamW's decoupled weight decay, rather than Adam's L2 term in the gradient.
    decoupled: bool,
}

impl Adam {
    pub fn new(params: Vec<Param>, settings: AdamSettings, amsgrad: bool, decoupled: bool) -> Self {
        let exp_avg = zeros_like(&params);
        let exp_avg_sq = zeros_like(&params);
        let max_exp_avg_sq = amsgrad.then(|| zeros_like(&params));
        Self { params, exp_avg, exp_avg_sq, max_exp_avg_sq, step: 0, settings, decoupled }
    }
}

impl Optimizer for Adam {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let AdamSettings { beta1, beta2, eps } = self.settings;
        let bias_correction1 = 1.0 - beta1.powi(self.step as i32);
        let bias_correction2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias_correction1;
        for (i, param) in self.params.iter_mut().enumerate() {
            let Some(mut grad) = param.grad() else { continue };
            let p = &mut param.tensor;
            if param.weight_decay != 0.0 {
                if self.decoupled {
                    let _ = p.g_mul_scalar_(1.0 - lr * param.weight_decay);
                } else {
                    grad = &grad + &*p * param.weight_decay;
                }
            }
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            let _ = m.lerp_(&grad, 1.0 - beta1);
            let _ = v.g_mul_scalar_(beta2);
            let _ = v.g_add_(&(&grad * &grad * (1.0 - beta2)));
            let second = match &mut self.max_exp_avg_sq {
                Some(max) => {
                    let bigger = max[i].maximum(v);
                    max[i].copy_(&bigger);
                    max[i].shallow_clone()
                }
                None => v.shallow_clone(),
            };
            let denom = second.sqrt() / bias_correction2_sqrt + eps;
            let _ = p.g_sub_(&(m.g_div(&denom) * step_size));
        }
    }
}
