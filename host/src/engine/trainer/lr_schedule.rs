//! The learning rate of each step, from the run's schedule (the built-in one, or a
//! plugin's through the same trait), and the schedule's part in evaluations and
//! checkpoints.

use anyhow::Result;

use super::Trainer;
use crate::engine::optim::schedule::{Scheduler, StepPlan};

impl Trainer {
    /// Makes the run's schedule for its steps: the plugin's if one was chosen.
    pub(super) fn plan_schedule(&mut self, warmup_steps: i64, max_steps: i64) {
        let plan = StepPlan { base_lr: self.config.args.learning_rate, warmup_steps, max_steps };
        let schedule = match self.schedule_factory.take() {
            Some(factory) => factory.make(plan),
            None => Box::new(Scheduler::new(&self.config.schedule, warmup_steps, max_steps)),
        };
        self.schedule = Some(std::cell::RefCell::new(schedule));
    }

    /// The learning rate for the next optimizer step (HF: the scheduler's last lr); the
    /// base rate before training has planned its steps.
    pub(super) fn current_lr(&self) -> Result<f64> {
        let step = self.run.schedule_step();
        match &self.schedule {
            Some(schedule) => schedule.borrow_mut().lr(step),
            None => Ok(self.config.args.learning_rate),
        }
    }

    /// Feeds an evaluation's metric_for_best_model to the schedule.
    pub(super) fn schedule_on_metric(&mut self, value: f64) -> Result<()> {
        match &mut self.schedule {
            Some(schedule) => schedule.get_mut().on_metric(value),
            None => Ok(()),
        }
    }

    /// What a checkpoint keeps of the schedule.
    pub(super) fn schedule_state(&mut self) -> Result<serde_json::Value> {
        match &mut self.schedule {
            Some(schedule) => schedule.get_mut().state(),
            None => Ok(serde_json::Value::Null),
        }
    }

    pub(super) fn load_schedule_state(&mut self, state: &serde_json::Value) -> Result<()> {
        match &mut self.schedule {
            Some(schedule) => schedule.get_mut().load_state(state),
            None => Ok(()),
        }
    }
}
