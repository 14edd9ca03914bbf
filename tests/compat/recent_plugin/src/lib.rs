//! A plugin built against plugin-api 1.5.0 that uses what 1.1-1.5 added: a callback that
//! sees the parameters after each step (1.3), adds an entry to the logs (1.2), keeps a
//! JSON state and a tensor state (1.1, 1.3), and declares its config keys (1.4).

use plugin_api::prelude::*;

#[derive(Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// Multiplies the logged step count.
    scale: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { scale: 1.0 }
    }
}

struct Recent {
    scale: f64,
    /// Optimizer steps whose parameters it saw.
    steps: u64,
    /// The sum of the parameters after the last step.
    total: Option<Tensor>,
}

impl Callback for Recent {
    const WANTS_PARAMETERS: bool = true;
    const WANTS_EXTRA_LOGS: bool = true;

    fn on_parameters(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        parameters: &Tensors,
    ) -> Result<(), PluginError> {
        self.steps += 1;
        let total = parameters
            .iter()
            .map(|(_, p)| p.sum(Kind::Double))
            .fold(Tensor::zeros([], (Kind::Double, plugin_api::tch::Device::Cpu)), |a, b| a + b);
        self.total = Some(total);
        Ok(())
    }

    fn extra_logs(
        &mut self,
        _: &TrainingArguments,
        _: &TrainerState,
        _: &Metrics,
    ) -> Result<Vec<(String, f64)>, PluginError> {
        Ok(vec![("recent_steps".to_owned(), self.steps as f64 * self.scale)])
    }

    fn state(&self) -> Option<plugin_api::serde_json::Value> {
        Some(plugin_api::serde_json::json!({ "steps": self.steps }))
    }

    fn load_state(&mut self, state: plugin_api::serde_json::Value) -> Result<(), PluginError> {
        self.steps = state["steps"].as_u64().ok_or_else(|| PluginError::new("no steps in the saved state"))?;
        Ok(())
    }

    fn state_tensors(&self) -> Tensors {
        let mut tensors = Tensors::new();
        if let Some(total) = &self.total {
            tensors.insert("total", total.shallow_clone());
        }
        tensors
    }

    fn load_state_tensors(&mut self, tensors: Tensors) -> Result<(), PluginError> {
        self.total = tensors.get("total").map(|t| t.copy());
        Ok(())
    }
}

export_plugin! {
    callbacks: { "recent" => |c: Config| Ok(Recent { scale: c.scale, steps: 0, total: None }) },
}
