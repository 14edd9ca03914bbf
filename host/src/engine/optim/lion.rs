//! Lion (Chen et al., 2023), as its reference implementation: sign of an interpolated
//! momentum, decoupled weight decay.

use tch::Tensor;

use super::{export_slot, import_slot, zeros_like, Optimizer, OptimizerState, Param};

pub struct Lion {
    params: Vec<Param>,
    exp_avg: Vec<Tensor>,
    beta1: f64,
    beta2: f64,
}

impl Lion {
    pub fn new(params: Vec<Param>, beta1: f64, beta2: f64) -> Self {
        let exp_avg = zeros_like(&params);
        Self { params, exp_avg, beta1, beta2 }
    }
}

impl Optimizer for Lion {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        Ok({
            let mut tensors = Vec::new();
            export_slot(&self.params, "exp_avg", &self.exp_avg, &mut tensors);
            OptimizerState { tensors, scalars: serde_json::json!({}) }
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        import_slot(&self.params, "exp_avg", &mut self.exp_avg, state)
    }

    fn step(&mut self, lr: f64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for (i, param) in self.params.iter_mut().enumerate() {
            let Some(grad) = param.grad() else { continue };
            let _ = param.tensor.g_mul_scalar_(1.0 - lr * param.weight_decay);
            let exp_avg = &mut self.exp_avg[i];
            let update = (&*exp_avg * self.beta1 + &grad * (1.0 - self.beta1)).sign();
            let _ = param.tensor.g_sub_(&(update * lr));
            let _ = exp_avg.g_mul_scalar_(self.beta2);
            let _ = exp_avg.g_add_(&(&grad * (1.0 - self.beta2)));
        }
        Ok(())
    }
}
