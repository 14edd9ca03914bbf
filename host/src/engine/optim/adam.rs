//! Adam and AdamW, as `torch.optim.Adam` / `torch.optim.AdamW`. AdamW on float32
//! parameters runs libtorch's fused kernel (`fused=True`): one call per weight-decay group.
//! Otherwise the single-tensor path, the same operations in the same order, allocating
//! nothing: temporaries live in one scratch tensor per parameter, made once.

use tch::Tensor;

use super::{export_slot, import_slot, saved_step, zeros_like, AdamSettings, Optimizer, OptimizerState, Param};

pub struct Adam {
    params: Vec<Param>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    max_exp_avg_sq: Option<Vec<Tensor>>,
    scratch: Vec<Tensor>,
    step: i64,
    settings: AdamSettings,
    /// AdamW's decoupled weight decay, rather than Adam's L2 term in the gradient.
    decoupled: bool,
    /// Parameter indices by weight decay when the fused kernel applies (AdamW without
    /// amsgrad, float32 parameters on one device), decided once.
    fused_groups: Option<Vec<(f64, Vec<usize>)>>,
    /// The step number as a float tensor on the parameters' device, for the fused kernel.
    step_tensor: Option<Tensor>,
}

impl Adam {
    pub fn new(params: Vec<Param>, settings: AdamSettings, amsgrad: bool, decoupled: bool) -> Self {
        let exp_avg = zeros_like(&params);
        let exp_avg_sq = zeros_like(&params);
        let max_exp_avg_sq = amsgrad.then(|| zeros_like(&params));
        let fused_groups = (decoupled && !amsgrad).then(|| fused_groups(&params)).flatten();
        // The fused kernel needs no scratch memory.
        let scratch = if fused_groups.is_some() { Vec::new() } else { zeros_like(&params) };
        Self {
            params,
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
            scratch,
            step: 0,
            settings,
            decoupled,
            fused_groups,
            step_tensor: None,
        }
    }

    /// One fused AdamW step, skipped on the device where `skip` holds 1. The step count
    /// lives in `step_tensor` from the first fused step on, so that a skip needs no read.
    fn fused_step(&mut self, lr: f64, groups: &[(f64, Vec<usize>)], skip: Option<&Tensor>) -> Result<(), String> {
        let device = self.params[0].tensor.device();
        let host_step = self.step;
        let step =
            self.step_tensor.get_or_insert_with(|| Tensor::full([], host_step as f64, (tch::Kind::Float, device)));
        let _ = step.g_add_scalar_(1.0);
        let AdamSettings { beta1, beta2, eps } = self.settings;
        for (decay, members) in groups {
            let (mut params, mut grads, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for &i in members {
                let Some(grad) = self.params[i].grad() else { continue };
                params.push(&self.params[i].tensor);
                grads.push(grad);
                m.push(&self.exp_avg[i]);
                v.push(&self.exp_avg_sq[i]);
            }
            if params.is_empty() {
                continue;
            }
            let grads: Vec<&Tensor> = grads.iter().collect();
            crate::native::fused_adamw(&params, &grads, &m, &v, step, lr, (beta1, beta2, eps), *decay, skip)?;
        }
        if let Some(skip) = skip {
            // A skipped step does not count (as torch.optim with a GradScaler's found_inf).
            let _ = step.g_sub_(skip);
        }
        Ok(())
    }

    /// The number of steps taken: the device's count once fused steps run (read here,
    /// at a checkpoint), else the host's.
    fn steps_taken(&self) -> i64 {
        match &self.step_tensor {
            Some(step) => step.double_value(&[]) as i64,
            None => self.step,
        }
    }
}

/// The parameters by weight decay, for the fused kernel (one call per group); `None` when
/// it does not apply: parameters other than float32, or on more than one device.
fn fused_groups(params: &[Param]) -> Option<Vec<(f64, Vec<usize>)>> {
    let device = params.first()?.tensor.device();
    if !params.iter().all(|p| p.tensor.kind() == tch::Kind::Float && p.tensor.device() == device) {
        return None;
    }
    let mut groups: Vec<(f64, Vec<usize>)> = Vec::new();
    for (i, param) in params.iter().enumerate() {
        match groups.iter_mut().find(|(decay, _)| *decay == param.weight_decay) {
            Some((_, members)) => members.push(i),
            None => groups.push((param.weight_decay, vec![i])),
        }
    }
    Some(groups)
}

impl Optimizer for Adam {
    fn step_unless(&mut self, lr: f64, skip: &Tensor) -> Result<bool, String> {
        let _guard = tch::no_grad_guard();
        let Some(groups) = self.fused_groups.take() else { return Ok(false) };
        let stepped = self.fused_step(lr, &groups, Some(skip));
        self.fused_groups = Some(groups);
        stepped.map(|()| true)
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        Ok({
            let mut tensors = Vec::new();
            export_slot(&self.params, "exp_avg", &self.exp_avg, &mut tensors);
            export_slot(&self.params, "exp_avg_sq", &self.exp_avg_sq, &mut tensors);
            if let Some(max) = &self.max_exp_avg_sq {
                export_slot(&self.params, "max_exp_avg_sq", max, &mut tensors);
            }
            OptimizerState { tensors, scalars: serde_json::json!({ "step": self.steps_taken() }) }
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        import_slot(&self.params, "exp_avg", &mut self.exp_avg, state)?;
        import_slot(&self.params, "exp_avg_sq", &mut self.exp_avg_sq, state)?;
        if let Some(max) = &mut self.max_exp_avg_sq {
            import_slot(&self.params, "max_exp_avg_sq", max, state)?;
        }
        self.step = saved_step(state)?;
        if let Some(step) = &mut self.step_tensor {
            let _ = step.fill_(self.step as f64);
        }
        Ok(())
    }

    fn step(&mut self, lr: f64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        if let Some(groups) = self.fused_groups.take() {
            let stepped = self.fused_step(lr, &groups, None);
            self.fused_groups = Some(groups);
            return stepped;
        }
        self.step += 1;
        let AdamSettings { beta1, beta2, eps } = self.settings;
        let bias_correction1 = 1.0 - beta1.powi(self.step as i32);
        let bias_correction2_sqrt = (1.0 - beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias_correction1;
        for (i, param) in self.params.iter_mut().enumerate() {
            let Some(grad) = param.grad() else { continue };
            let scratch = &mut self.scratch[i];
            let p = &mut param.tensor;
            // Adam's L2 term: grad + weight_decay * param, built in the scratch tensor.
            let grad = if param.weight_decay != 0.0 && !self.decoupled {
                scratch.copy_(p);
                let _ = scratch.g_mul_scalar_(param.weight_decay);
                let _ = scratch.g_add_(&grad);
                scratch.copy()
            } else {
                grad
            };
            if param.weight_decay != 0.0 && self.decoupled {
                let _ = p.g_mul_scalar_(1.0 - lr * param.weight_decay);
            }
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            let _ = m.lerp_(&grad, 1.0 - beta1);
            // v = beta2 * v + (1 - beta2) * grad * grad, as addcmul_ computes it.
            let _ = v.g_mul_scalar_(beta2);
            scratch.copy_(&grad);
            let _ = scratch.g_mul_scalar_(1.0 - beta2);
            let _ = v.addcmul_(scratch, &grad);
            let second = match &mut self.max_exp_avg_sq {
                Some(max) => {
                    let _ = max[i].maximum_out(&max[i], v);
                    &max[i]
                }
                None => &*v,
            };
            // denom = sqrt(v) / sqrt(bias_correction2) + eps; param -= step_size * m / denom.
            let _ = second.sqrt_out(scratch);
            let _ = scratch.g_div_scalar_(bias_correction2_sqrt);
            let _ = scratch.g_add_scalar_(eps);
            let _ = m.div_out(scratch, scratch);
            let _ = scratch.g_mul_scalar_(step_size);
            let _ = p.g_sub_(scratch);
        }
        Ok(())
    }
}
