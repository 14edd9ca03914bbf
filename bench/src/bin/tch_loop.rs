//! Contender 3 of the CPU benchmark: the default job's training loop written directly
//! against tch, with no host: the same data, batches, model, AdamW, linear schedule and
//! gradient clipping, nothing else. The floor for the host's own overhead.
//!
//!     tch_loop STEPS              prints {"samples_per_second": ..., "seconds": ..., "steps": ...}
//!     tch_loop --export FILE      writes the training split (input, labels) as safetensors

use std::time::Instant;

use anyhow::Result;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Reduction, Tensor};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let digits = host::engine::data::load_digits()?;
    let (train, _) = host::engine::data::split(&digits, 20.0, None, None);
    let input = train.field("input").expect("digits have input").shallow_clone();
    let labels = train.labels().shallow_clone();
    if args.get(1).map(String::as_str) == Some("--export") {
        Tensor::write_safetensors(&[("input", &input), ("labels", &labels)], &args[2])?;
        return Ok(());
    }
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let batch_size = 64;

    tch::manual_seed(42);
    let vars = nn::VarStore::new(tch::Device::Cpu);
    let root = vars.root() / "layers";
    let model = nn::seq()
        .add(nn::linear(&root / 0, 64, 256, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / 2, 256, 256, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / 4, 256, 10, Default::default()));
    let learning_rate = 2e-3;
    let mut optimizer = nn::AdamW { wd: 0.01, ..Default::default() }.build(&vars, learning_rate)?;
    let parameters = vars.trainable_variables();

    // The batch lists, as the host draws them (seed 42, epoch by epoch).
    let mut batches: Vec<Tensor> = Vec::new();
    for epoch in 0.. {
        let order = host::engine::data::epoch_order(train.len(), 42, epoch);
        batches.extend(host::engine::data::batches(&order, batch_size, false));
        if batches.len() >= steps {
            break;
        }
    }
    batches.truncate(steps);

    let started = Instant::now();
    let mut loss_sum = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    for (step, index) in batches.iter().enumerate() {
        let (x, y) = (input.index_select(0, index), labels.index_select(0, index));
        let loss = model.forward(&x).cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.0);
        optimizer.zero_grad();
        loss.backward();
        // torch.nn.utils.clip_grad_norm_: no read of the norm on the host.
        tch::no_grad(|| {
            let norms: Vec<Tensor> = parameters.iter().map(|p| p.grad().norm()).collect();
            let coef = (Tensor::stack(&norms, 0).norm() + 1e-6).reciprocal().clamp_max(1.0);
            for p in &parameters {
                let _ = p.grad().g_mul_(&coef);
            }
        });
        optimizer.set_lr(learning_rate * (steps - step) as f64 / steps as f64);
        optimizer.step();
        loss_sum += loss.detach();
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "samples_per_second": (steps * batch_size) as f64 / seconds,
        "seconds": seconds,
        "steps": steps,
        "mean_loss": loss_sum.double_value(&[]) / steps as f64,
    });
    println!("{report}");
    Ok(())
}
