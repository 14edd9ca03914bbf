//! Adagrad, as `torch.optim.Adagrad`.

use tch::Tensor;

use super::{export_slot, import_slot, saved_step, Optimizer, OptimizerState, Param};

pub struct Adagrad {
    params: Vec<Param>,
    sum: Vec<Tensor>,
    step: i64,
    lr_decay: f64,
    eps: f64,
}

impl Adagrad {
    pub fn new(params: Vec<Param>, lr_decay: f64, eps: f64, initial_accumulator_value: f64) -> Self {
        let sum = params
            .iter()
            .map(|p| p.tensor.zeros_like().set_requires_grad(false).fill_(initial_accumulator_value))
            .collect();
        Self { params, sum, step: 0, lr_decay, eps }
    }
}

impl Optimizer for Adagrad {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        Ok({
            let mut tensors = Vec::new();
            export_slot(&self.params, "sum", &self.sum, &mut tensors);
            OptimizerState { tensors, scalars: serde_json::json!({ "step": self.step }) }
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        import_slot(&self.params, "sum", &mut self.sum, state)?;
        self.step = saved_step(state)?;
        Ok(())
    }

    fn step(&mut self, lr: f64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let clr = lr / (1.0 + (self.step - 1) as f64 * self.lr_decay);
        for (i, param) in self.params.iter_mut().enumerate() {
            let Some(mut grad) = param.grad() else { continue };
            if param.weight_decay != 0.0 {
                grad = &grad + &param.tensor * param.weight_decay;
            }
            let sum = &mut self.sum[i];
            let _ = sum.g_add_(&(&grad * &grad));
            let std = sum.sqrt() + self.eps;
            let _ = param.tensor.g_sub_(&(&grad / &std * clr));
        }
        Ok(())
    }
}
