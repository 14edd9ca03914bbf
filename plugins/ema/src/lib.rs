//! `ema`: keeps an exponential moving average of the weights,
//! `average = decay * average + (1 - decay) * weights` after every optimizer step, and has
//! evaluations (and so the best-model choice) use it. Training itself is unchanged. The
//! average is saved in checkpoints and restored on resume.
//!
//! Config: `decay` (default 0.999).

use plugin_api::prelude::*;
use plugin_api::serde_json::{json, Value};

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Weight of the running average at each update: average = decay * average + (1 - decay) * weights.
    decay: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { decay: 0.999 }
    }
}

struct Ema {
    decay: f64,
    average: Tensors,
}

impl Ema {
    fn new(config: Config) -> Result<Self, PluginError> {
        if !(0.0..1.0).contains(&config.decay) {
            return Err(PluginError::config(format!("decay must be in [0, 1) (got {})", config.decay)));
        }
        Ok(Self { decay: config.decay, average: Tensors::new() })
    }
}

impl Callback for Ema {
    const WANTS_PARAMETERS: bool = true;

    fn on_parameters(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        parameters: &Tensors,
    ) -> Result<(), PluginError> {
        let _guard = plugin_api::tch::no_grad_guard();
        for (name, weights) in parameters.iter() {
            match self.average.get(name) {
                Some(average) => {
                    let _ = average.shallow_clone().lerp_(weights, 1.0 - self.decay);
                }
                None => self.average.insert(name, weights.detach().copy()),
            }
        }
        Ok(())
    }

    fn evaluation_weights(&mut self, _: &TrainingArguments, _: &TrainerState) -> Result<Option<Tensors>, PluginError> {
        if self.average.is_empty() {
            return Ok(None);
        }
        let mut weights = Tensors::new();
        for (name, average) in self.average.iter() {
            weights.insert(name, average.copy());
        }
        Ok(Some(weights))
    }

    fn state(&self) -> Option<Value> {
        Some(json!({ "decay": self.decay }))
    }

    fn state_tensors(&self) -> Tensors {
        let mut tensors = Tensors::new();
        for (name, average) in self.average.iter() {
            tensors.insert(name, average.copy());
        }
        tensors
    }

    fn load_state_tensors(&mut self, tensors: Tensors) -> Result<(), PluginError> {
        let mut average = Tensors::new();
        for (name, tensor) in tensors.iter() {
            average.insert(name, tensor.copy());
        }
        self.average = average;
        Ok(())
    }
}

export_plugin! {
    callbacks: { "ema" => Ema::new },
}
