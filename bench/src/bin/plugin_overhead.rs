//! Plugin overhead micro-benchmarks: compute_loss through a plugin against the same loss
//! built in, and events fired to 10 no-op callback plugins against none.
//!
//!     plugin_overhead PLUGIN_DIR      prints one JSON object (microseconds per call)
//!
//! PLUGIN_DIR holds libweighted_ce.so and libtest_fixtures.so (target/release).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use host::engine::callbacks::Event;
use host::engine::trainer::state::TrainerState;
use plugin_api::Tensors;
use tch::{Kind, Reduction, Tensor};

/// Median of `rounds` timings of `calls` calls, in microseconds per call.
fn time_per_call(rounds: usize, calls: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..calls {
        f()?; // warm-up
    }
    let mut timings: Vec<f64> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        timings.push(started.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    timings.sort_by(f64::total_cmp);
    Ok(timings[rounds / 2])
}

fn main() -> Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/release".to_owned());
    let dir = Path::new(&dir);
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let logits = Tensor::randn([64, 10], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let labels = Tensor::randint(10, [64], (Kind::Int64, tch::Device::Cpu));
    let mut outputs = Tensors::new();
    outputs.insert("logits", logits.shallow_clone());
    let mut batch = Tensors::new();
    batch.insert("labels", labels.shallow_clone());

    let weighted_ce = host::plugins::Plugin::load(&dir.join("libweighted_ce.so"))?;
    let mut loss = weighted_ce.create_loss("weighted_ce", &serde_json::json!({}))?;
    let (rounds, calls) = (21, 2000);
    let builtin = time_per_call(rounds, calls, || {
        let value = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0) / 64.0;
        let _ = value.detach();
        Ok(())
    })?;
    let plugin = time_per_call(rounds, calls, || {
        let value = loss.compute_loss(&outputs, &batch, Some(64))?;
        let _ = value.detach();
        Ok(())
    })?;

    let args = host::config::arguments::TrainingArguments::default();
    let args_json = serde_json::to_string(&args)?;
    let fixtures = host::plugins::Plugin::load(&dir.join("libtest_fixtures.so"))?;
    let callbacks: Vec<_> =
        (0..10).map(|_| fixtures.create_callback("noop", &serde_json::json!({}), &args_json)).collect::<Result<_>>()?;
    let mut with_ten = host::engine::callbacks::CallbackHandler::new(callbacks);
    let mut with_none = host::engine::callbacks::CallbackHandler::new(Vec::new());
    // As a run sets it: log, evaluate and save every 500 steps.
    let state = TrainerState { logging_steps: 500, eval_steps: 500, save_steps: 500, ..Default::default() };
    let events = [Event::StepBegin, Event::PreOptimizerStep, Event::OptimizerStep, Event::StepEnd];
    let per_step = |handler: &mut host::engine::callbacks::CallbackHandler| -> Result<()> {
        for event in events {
            handler.fire(event, &args, &state, &[])?;
        }
        Ok(())
    };
    let none = time_per_call(rounds, calls, || per_step(&mut with_none))?;
    let ten = time_per_call(rounds, calls, || per_step(&mut with_ten))?;
    let report = serde_json::json!({
        "compute_loss_builtin_us": builtin,
        "compute_loss_plugin_us": plugin,
        "compute_loss_overhead_us": plugin - builtin,
        "step_events_no_callbacks_us": none,
        "step_events_ten_noop_callbacks_us": ten,
        "per_event_per_callback_us": (ten - none) / (events.len() * 10) as f64,
    });
    println!("{report}");
    Ok(())
}
