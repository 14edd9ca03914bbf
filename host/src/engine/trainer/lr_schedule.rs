//! The learning rate of each step: the built-in schedule, or a plugin's
//! (lr_scheduler_type plugin:NAME), which then also holds the schedule's state.

use std::cell::RefCell;

use anyhow::Result;
use plugin_api::Schedule;

use super::Trainer;
use crate::plugins::PluginScheduler;

/// A plugin's schedule and, once training has planned its steps, what it runs over.
pub(super) struct PluginSchedule {
    // Asking for a rate is a call into the plugin, which needs it mutable; the trainer
    // asks from places that only read.
    scheduler: RefCell<PluginScheduler>,
    pub(super) schedule: Option<Schedule>,
}

impl PluginSchedule {
    pub(super) fn new(scheduler: PluginScheduler) -> Self {
        Self { scheduler: RefCell::new(scheduler), schedule: None }
    }
}

impl Trainer {
    /// The learning rate for the next optimizer step (HF: the scheduler's last lr).
    pub(super) fn current_lr(&self) -> Result<f64> {
        let step = self.run.schedule_step();
        if let Some(PluginSchedule { scheduler, schedule: Some(schedule) }) = &self.plugin_schedule {
            return scheduler.borrow_mut().lr(step, schedule);
        }
        Ok(self.scheduler.as_ref().map_or(self.config.args.learning_rate, |s| s.lr(step)))
    }

    /// Feeds an evaluation's metric_for_best_model to the schedule.
    pub(super) fn schedule_on_metric(&mut self, value: f64) -> Result<()> {
        if let Some(plugin) = &mut self.plugin_schedule {
            return plugin.scheduler.get_mut().on_metric(value);
        }
        if let Some(scheduler) = &mut self.scheduler {
            scheduler.on_metric(value);
        }
        Ok(())
    }

    /// What a checkpoint keeps of the schedule.
    pub(super) fn schedule_state(&mut self) -> Result<serde_json::Value> {
        if let Some(plugin) = &mut self.plugin_schedule {
            return plugin.scheduler.get_mut().state();
        }
        Ok(self.scheduler.as_ref().map(|s| s.state()).unwrap_or_default())
    }

    pub(super) fn load_schedule_state(&mut self, state: &serde_json::Value) -> Result<()> {
        if let Some(plugin) = &mut self.plugin_schedule {
            return match state.is_null() {
                true => Ok(()),
                false => plugin.scheduler.get_mut().load_state(state),
            };
        }
        if let Some(scheduler) = &mut self.scheduler {
            scheduler.load_state(state).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}
