//! Learning-rate schedule components from plugins (Hugging Face's `create_scheduler`).

use anyhow::{anyhow, Result};
use plugin_api::ffi::ExtensionOp;
use plugin_api::{Schedule, Tensors};

use super::component::PluginComponent;
use crate::engine::optim::schedule::{LrSchedule, ScheduleFactory, StepPlan};

pub struct PluginScheduler(pub(super) PluginComponent);

impl PluginScheduler {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The rate for the step after `step` completed ones.
    pub fn lr(&mut self, step: i64, schedule: &Schedule) -> Result<f64> {
        let request = serde_json::json!({
            "step": step,
            "base_lr": schedule.base_lr,
            "max_steps": schedule.max_steps,
            "warmup_steps": schedule.warmup_steps,
        });
        let (answer, _) = self.0.call_json(ExtensionOp::SCHEDULER_LR, "lr", &request.to_string(), &Tensors::new())?;
        let lr = answer["lr"].as_f64().filter(|lr| lr.is_finite() && *lr >= 0.0);
        lr.ok_or_else(|| anyhow!("{} gave no usable learning rate for step {step} ({answer})", self.0.label()))
    }

    pub fn on_metric(&mut self, value: f64) -> Result<()> {
        let json = serde_json::json!({ "value": value }).to_string();
        self.0.call(ExtensionOp::SCHEDULER_METRIC, "on_metric", &json, &Tensors::new())?;
        Ok(())
    }

    pub fn state(&mut self) -> Result<serde_json::Value> {
        Ok(self.0.call_json(ExtensionOp::CALLBACK_STATE_SAVE, "saving its state", "", &Tensors::new())?.0)
    }

    pub fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.0.call(ExtensionOp::CALLBACK_STATE_LOAD, "restoring its state", &state.to_string(), &Tensors::new())?;
        Ok(())
    }
}

/// The plugin's schedule over the run's steps.
struct PlannedSchedule {
    scheduler: PluginScheduler,
    schedule: Schedule,
}

impl ScheduleFactory for PluginScheduler {
    fn make(self: Box<Self>, plan: StepPlan) -> Box<dyn LrSchedule> {
        let schedule = Schedule { base_lr: plan.base_lr, max_steps: plan.max_steps, warmup_steps: plan.warmup_steps };
        Box::new(PlannedSchedule { scheduler: *self, schedule })
    }
}

impl LrSchedule for PlannedSchedule {
    fn lr(&mut self, step: i64) -> Result<f64> {
        self.scheduler.lr(step, &self.schedule)
    }

    fn on_metric(&mut self, value: f64) -> Result<()> {
        self.scheduler.on_metric(value)
    }

    fn state(&mut self) -> Result<serde_json::Value> {
        self.scheduler.state()
    }

    /// A checkpoint without a schedule state (null) leaves the plugin's as it is.
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        match state.is_null() {
            true => Ok(()),
            false => self.scheduler.load_state(state),
        }
    }
}
