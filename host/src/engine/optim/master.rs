//! 16-bit parameters (a model loaded in bfloat16 or float16) trained through float32
//! master copies: the optimizer's state and its update are float32, and the parameter
//! is the master rounded after each step.
//!
//! Why not step the 16-bit tensors themselves, as torch.optim does: bfloat16 keeps 8 bits
//! of mantissa. Adam's second moment grows by (1 - beta2) g^2 = v / 1000 per step, below
//! half a unit in the last place of v, so a bfloat16 v stops moving; and an update of
//! lr * m / sqrt(v) ~ 1e-5 on a weight of 0.02 is below its spacing (~1e-4), so the weight
//! never changes. Costs: 4 bytes per 16-bit parameter for the master, 4 for its float32
//! gradient, and float32 moments (8 bytes for Adam instead of 4).

use tch::{Kind, Tensor};

use super::{find, Optimizer, OptimizerState, Param};

/// The slot of a master copy in a checkpoint's optimizer state.
const MASTER: &str = "master";

pub struct MasterWeights {
    /// The model's parameters (what backward fills and the trainer reads).
    params: Vec<Param>,
    /// Per parameter: its float32 master and the master's gradient buffer, for 16-bit ones.
    masters: Vec<Option<(Tensor, Tensor)>>,
    /// The optimizer over the masters (and the float32 parameters as they are).
    inner: Box<dyn Optimizer>,
}

fn is_16_bit(tensor: &Tensor) -> bool {
    matches!(tensor.kind(), Kind::BFloat16 | Kind::Half)
}

impl MasterWeights {
    /// `build` over the parameters, through float32 masters for the 16-bit ones (none:
    /// `build` over them as they are).
    pub fn wrap(params: Vec<Param>, build: impl FnOnce(Vec<Param>) -> Box<dyn Optimizer>) -> Box<dyn Optimizer> {
        if !params.iter().any(|p| is_16_bit(&p.tensor)) {
            return build(params);
        }
        let mut masters = Vec::with_capacity(params.len());
        let mut inner_params = Vec::with_capacity(params.len());
        for param in &params {
            let tensor = if is_16_bit(&param.tensor) {
                let master = param.tensor.detach().to_kind(Kind::Float).set_requires_grad(true);
                let grad = master.zeros_like();
                crate::native::set_grad(&master, &grad).expect("a float32 gradient for a float32 tensor");
                masters.push(Some((master.shallow_clone(), grad)));
                master
            } else {
                masters.push(None);
                param.tensor.shallow_clone()
            };
            inner_params.push(Param { name: param.name.clone(), tensor, weight_decay: param.weight_decay });
        }
        Box::new(Self { params, masters, inner: build(inner_params) })
    }
}

impl MasterWeights {
    /// The 16-bit gradients into the masters' float32 ones.
    fn gradients_to_masters(&self) -> Result<(), String> {
        for (param, master) in self.params.iter().zip(&self.masters) {
            if let (Some((_, grad)), Some(from)) = (master, param.grad()) {
                grad.shallow_clone().f_copy_(&from).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// The parameters become their masters, rounded.
    fn masters_to_parameters(&self) -> Result<(), String> {
        for (param, master) in self.params.iter().zip(&self.masters) {
            if let Some((master, _)) = master {
                param.tensor.shallow_clone().f_copy_(master).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

impl Optimizer for MasterWeights {
    fn step(&mut self, lr: f64) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        self.gradients_to_masters()?;
        self.inner.step(lr)?;
        self.masters_to_parameters()
    }

    fn step_unless(&mut self, lr: f64, skip: &Tensor) -> Result<bool, String> {
        let _guard = tch::no_grad_guard();
        self.gradients_to_masters()?;
        if !self.inner.step_unless(lr, skip)? {
            return Ok(false);
        }
        // A skipped step left the masters as they were: rounding them again changes nothing.
        self.masters_to_parameters().map(|()| true)
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state(&self) -> Result<OptimizerState, String> {
        Ok({
            let mut state = self.inner.state()?;
            for (param, master) in self.params.iter().zip(&self.masters) {
                if let Some((master, _)) = master {
                    state.tensors.push((format!("{}.{MASTER}", param.name), master.detach()));
                }
            }
            state
        })
    }

    fn load_state(&mut self, state: &OptimizerState) -> Result<(), String> {
        let suffix = format!(".{MASTER}");
        let inner = OptimizerState {
            tensors: state
                .tensors
                .iter()
                .filter(|(n, _)| !n.ends_with(&suffix))
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            scalars: state.scalars.clone(),
        };
        self.inner.load_state(&inner)?;
        let _guard = tch::no_grad_guard();
        for (param, master) in self.params.iter().zip(&self.masters) {
            if let Some((master, _)) = master {
                let saved = find(state, &format!("{}{suffix}", param.name))?;
                if saved.size() != master.size() {
                    return Err(format!(
                        "optimizer state {}{suffix} is {:?}, expected {:?}",
                        param.name,
                        saved.size(),
                        master.size()
                    ));
                }
                master.shallow_clone().copy_(saved);
            }
        }
        Ok(())
    }

    fn refresh_from_params(&mut self) {
        let _guard = tch::no_grad_guard();
        for (param, master) in self.params.iter().zip(&self.masters) {
            if let Some((master, _)) = master {
                master.shallow_clone().copy_(&param.tensor);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::optim::sgd::Sgd;
    use tch::Device;

    fn steps(tensor: &Tensor, optimizer: &mut dyn Optimizer, count: usize) {
        for _ in 0..count {
            optimizer.zero_grad().unwrap();
            (tensor * 1.0).sum(Kind::Float).backward();
            optimizer.step(1e-4).unwrap();
        }
    }

    #[test]
    fn small_updates_accumulate_in_the_master_and_reach_the_bfloat16_weight() {
        let options = (Kind::BFloat16, Device::Cpu);
        let param = |t: &Tensor| vec![Param { name: "w".into(), tensor: t.shallow_clone(), weight_decay: 0.0 }];
        // Stepping bfloat16 directly: 1 - 1e-4 rounds back to 1, 100 times.
        let direct = Tensor::ones([3], options).set_requires_grad(true);
        steps(&direct, &mut Sgd::new(param(&direct), 0.0, 0.0, false), 100);
        assert_eq!(Vec::<f32>::try_from(direct.to_kind(Kind::Float)).unwrap(), vec![1.0; 3]);
        // Through a float32 master: 1 - 100 * 1e-4 = 0.99, rounded to bfloat16 (0.98828125).
        let weight = Tensor::ones([3], options).set_requires_grad(true);
        let mut optimizer = MasterWeights::wrap(param(&weight), |p| Box::new(Sgd::new(p, 0.0, 0.0, false)));
        steps(&weight, optimizer.as_mut(), 100);
        let master = optimizer.state().unwrap().tensors.into_iter().find(|(n, _)| n == "w.master").unwrap().1;
        let expected = (0..100).fold(1.0f32, |w, _| w - 1e-4);
        assert_eq!(Vec::<f32>::try_from(&master).unwrap(), vec![expected; 3]);
        let rounded = Tensor::from_slice(&[expected; 3]).to_kind(Kind::BFloat16);
        assert!(weight.equal(&rounded), "the weight is its master rounded");
        assert_eq!(weight.kind(), Kind::BFloat16);
    }
}
