//! RMSprop, as `torch.optim.RMSprop` (with momentum and the centered variant).

use tch::Tensor;

use super::{export_slot, import_slot, zeros_like, Optimizer, OptimizerState, Param};

pub struct RmsProp {
    params: Vec<Param>,
    square_avg: Vec<Tensor>,
    grad_avg: Vec<Tensor>,
    momentum_buffer: Vec<Tensor>,
    alpha: f64,
    eps: f64,
    momentum: f64,
    centered: bool,
}

impl RmsProp {
    pub fn new(params: Vec<Param>, alpha: f64, eps: f64, momentum: f64, centered: bool) -> Self {
        let (square_avg, grad_avg, momentum_buffer) = (zeros_like(&params), zeros_like(&params), zeros_like(&params));
        Self { params, square_avg, grad_avg, momentum_buffer, alpha, eps, momentum, centered }
    }
}

impl Optimizer for RmsProp {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        Ok({
            let mut tensors = Vec::new();
            export_slot(&self.params, "square_avg", &self.square_avg, &mut tensors);
            export_slot(&self.params, "grad_avg", &self.grad_avg, &mut tensors);
            export_slot(&self.params, "momentum_buffer", &self.momentum_buffer, &mut tensors);
            OptimizerState { tensors, scalars: serde_json::json!({}) }
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        import_slot(&self.params, "square_avg", &mut self.square_avg, state)?;
        import_slot(&self.params, "grad_avg", &mut self.grad_avg, state)?;
        import_slot(&self.params, "momentum_buffer", &mut self.momentum_buffer, state)
    }

    fn step(&mut self, lr: f64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for (i, param) in self.params.iter_mut().enumerate() {
            let Some(mut grad) = param.grad() else { continue };
            if param.weight_decay != 0.0 {
                grad = &grad + &param.tensor * param.weight_decay;
            }
            let square_avg = &mut self.square_avg[i];
            let _ = square_avg.g_mul_scalar_(self.alpha);
            let _ = square_avg.g_add_(&(&grad * &grad * (1.0 - self.alpha)));
            let avg = if self.centered {
                let grad_avg = &mut self.grad_avg[i];
                let _ = grad_avg.lerp_(&grad, 1.0 - self.alpha);
                (&*square_avg - &*grad_avg * &*grad_avg).sqrt() + self.eps
            } else {
                square_avg.sqrt() + self.eps
            };
            if self.momentum > 0.0 {
                let buffer = &mut self.momentum_buffer[i];
                let _ = buffer.g_mul_scalar_(self.momentum);
                let _ = buffer.g_add_(&(&grad / &avg));
                let _ = param.tensor.g_sub_(&(&*buffer * lr));
            } else {
                let _ = param.tensor.g_sub_(&(&grad / &avg * lr));
            }
        }
        Ok(())
    }
}
