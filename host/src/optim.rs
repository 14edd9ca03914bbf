//! The host's own optimizers. Owning them (rather than tch's, whose state is hidden inside
//! libtorch) lets checkpoints save and restore every moment exactly.

use tch::{Kind, Tensor};

/// AdamW with decoupled weight decay, step for step as `torch.optim.AdamW` (single-tensor,
/// non-amsgrad path).
pub struct AdamW {
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(params: Vec<Tensor>, beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        let zeros = |ps: &[Tensor]| ps.iter().map(|p| p.zeros_like().set_requires_grad(false)).collect();
        let exp_avg = zeros(&params);
        let exp_avg_sq = zeros(&params);
        Self { params, exp_avg, exp_avg_sq, step: 0, beta1, beta2, eps, weight_decay }
    }

    /// Applies one update with learning rate `lr` from the parameters' current gradients.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let bias_correction1 = 1.0 - self.beta1.powi(self.step as i32);
        let bias_correction2 = 1.0 - self.beta2.powi(self.step as i32);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        for ((param, m), v) in self.params.iter_mut().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
            let grad = param.grad();
            if !grad.defined() {
                continue;
            }
            if self.weight_decay != 0.0 {
                let _ = param.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = m.lerp_(&grad, 1.0 - self.beta1);
            let _ = v.g_mul_scalar_(self.beta2);
            let _ = v.g_add_(&(&grad * &grad * (1.0 - self.beta2)));
            let denom = (v.sqrt() / bias_correction2_sqrt) + self.eps;
            let _ = param.g_sub_(&(m.g_div(&denom) * step_size));
        }
    }

    /// Clears the gradients (sets them to zero in place, keeping their memory).
    pub fn zero_grad(&mut self) {
        for param in &mut self.params {
            let mut grad = param.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm` (0 disables), as
    /// `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping, as a tensor so
    /// that no device sync happens unless it is read.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().to_kind(Kind::Float)).collect();
        let total = Tensor::stack(&norms, 0).norm();
        if max_norm > 0.0 {
            let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
            for grad in &grads {
                let _ = grad.shallow_clone().g_mul_(&coef);
            }
        }
        total
    }
}
