//! SGD with momentum, dampening and Nesterov, as `torch.optim.SGD`.

use tch::Tensor;

use super::{find, Optimizer, OptimizerState, Param};

pub struct Sgd {
    params: Vec<Param>,
    momentum_buffers: Vec<Option<Tensor>>,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
}

impl Sgd {
    pub fn new(params: Vec<Param>, momentum: f64, dampening: f64, nesterov: bool) -> Self {
        let momentum_buffers = params.iter().map(|_| None).collect();
        Self { params, momentum_buffers, momentum, dampening, nesterov }
    }
}

impl Optimizer for Sgd {
    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        Ok({
            let tensors = self
                .params
                .iter()
                .zip(&self.momentum_buffers)
                .filter_map(|(p, b)| b.as_ref().map(|b| (format!("{}.momentum_buffer", p.name), b.shallow_clone())))
                .collect();
            OptimizerState { tensors, scalars: serde_json::json!({}) }
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        for (param, buffer) in self.params.iter().zip(&mut self.momentum_buffers) {
            let name = format!("{}.momentum_buffer", param.name);
            // A buffer exists once a momentum step has run.
            *buffer = find(state, &name).ok().map(|t| t.copy());
        }
        Ok(())
    }

    fn step(&mut self, lr: f64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for (i, param) in self.params.iter_mut().enumerate() {
            let Some(mut grad) = param.grad() else { continue };
            if param.weight_decay != 0.0 {
                grad = &grad + &param.tensor * param.weight_decay;
            }
            if self.momentum != 0.0 {
                let buffer = match &mut self.momentum_buffers[i] {
                    // The first step starts the buffer at the gradient, undamped.
                    None => self.momentum_buffers[i].insert(grad.detach().copy()),
                    Some(buffer) => {
                        let _ = buffer.g_mul_scalar_(self.momentum);
                        let _ = buffer.g_add_(&(&grad * (1.0 - self.dampening)));
                        buffer
                    }
                };
                grad = if self.nesterov { &grad + &*buffer * self.momentum } else { buffer.shallow_clone() };
            }
            let _ = param.tensor.g_sub_(&(grad * lr));
        }
        Ok(())
    }
}
