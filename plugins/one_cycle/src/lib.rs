//! `one_cycle`: the one-cycle learning-rate policy, equal to PyTorch's
//! `torch.optim.lr_scheduler.OneCycleLR` with `cycle_momentum=False` (the rate rises from
//! max_lr / div_factor to max_lr over pct_start of the run, then anneals to
//! max_lr / div_factor / final_div_factor; `three_phase` comes back down to the start
//! first). Select it with `--lr-scheduler-type plugin:one_cycle`.
//!
//! The optimizer's momentum is not cycled: a schedule sets learning rates only.
//!
//! Config (all optional): `max_lr` (default: the run's learning_rate), `total_steps`
//! (default: the run's optimizer steps), `pct_start` (0.3), `anneal_strategy` ("cos" or
//! "linear"), `div_factor` (25), `final_div_factor` (1e4), `three_phase` (false).

use std::f64::consts::PI;

use plugin_api::prelude::*;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(crate = "plugin_api::serde", deny_unknown_fields, default)]
#[schemars(crate = "plugin_api::schemars")]
struct Config {
    /// The peak rate; default: the run's learning_rate.
    max_lr: Option<f64>,
    /// The steps of the cycle; default: the run's optimizer steps.
    total_steps: Option<i64>,
    /// The share of the cycle spent raising the rate.
    pct_start: f64,
    /// cos or linear.
    anneal_strategy: String,
    /// The first rate is max_lr / div_factor.
    div_factor: f64,
    /// The last rate is max_lr / div_factor / final_div_factor.
    final_div_factor: f64,
    /// Come back down to the first rate before annealing to the last (three phases).
    three_phase: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_lr: None,
            total_steps: None,
            pct_start: 0.3,
            anneal_strategy: "cos".into(),
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }
}

struct OneCycle {
    config: Config,
}

impl OneCycle {
    fn new(config: Config) -> Result<Self, PluginError> {
        if !(config.pct_start > 0.0 && config.pct_start < 1.0) {
            return Err(PluginError::config(format!("pct_start must be in (0, 1) (got {})", config.pct_start)));
        }
        if !["cos", "linear"].contains(&config.anneal_strategy.as_str()) {
            return Err(PluginError::config(format!(
                "anneal_strategy must be cos or linear (got {})",
                config.anneal_strategy
            )));
        }
        if config.max_lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return Err(PluginError::config("max_lr must be a positive number"));
        }
        if config.total_steps.is_some_and(|steps| steps < 2) {
            return Err(PluginError::config("total_steps must be at least 2"));
        }
        if !(config.div_factor > 0.0 && config.final_div_factor > 0.0) {
            return Err(PluginError::config("div_factor and final_div_factor must be positive"));
        }
        Ok(Self { config })
    }

    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        match self.config.anneal_strategy.as_str() {
            "linear" => (end - start) * pct + start,
            _ => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
        }
    }
}

impl Scheduler for OneCycle {
    fn lr(&mut self, step: i64, schedule: &Schedule) -> Result<f64, PluginError> {
        let c = &self.config;
        let total = c.total_steps.unwrap_or(schedule.max_steps);
        if total < 2 {
            return Err(PluginError::config(format!(
                "one_cycle needs at least 2 optimizer steps (the run has {total})"
            )));
        }
        let max_lr = c.max_lr.unwrap_or(schedule.base_lr);
        let initial = max_lr / c.div_factor;
        let min = initial / c.final_div_factor;
        let total = total as f64;
        // (end step, start rate, end rate) of each phase, as OneCycleLR lays them out.
        let phases = if c.three_phase {
            vec![
                (c.pct_start * total - 1.0, initial, max_lr),
                (2.0 * c.pct_start * total - 2.0, max_lr, initial),
                (total - 1.0, initial, min),
            ]
        } else {
            vec![(c.pct_start * total - 1.0, initial, max_lr), (total - 1.0, max_lr, min)]
        };
        // Past the cycle (PyTorch refuses to step there) the last rate stays.
        let step = (step as f64).min(total - 1.0);
        let mut start_step = 0.0;
        for (i, &(end_step, start_lr, end_lr)) in phases.iter().enumerate() {
            if step <= end_step || i == phases.len() - 1 {
                let pct = (step - start_step) / (end_step - start_step);
                return Ok(self.anneal(start_lr, end_lr, pct));
            }
            start_step = end_step;
        }
        unreachable!("the last phase always answers")
    }
}

export_plugin! {
    schedulers: { "one_cycle" => OneCycle::new },
}
