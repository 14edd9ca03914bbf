//! The host against a plain PyTorch loop (scripts/reference/pytorch_loop.py, run with the
//! venv's Python): same initial weights, same batches, same hyperparameters; the loss of
//! every one of 100 steps agrees within 1e-5.

use std::process::Command;

use host::engine::data;
use host::engine::models::{Mlp, DIGITS_MLP};
use tch::{nn, Tensor};

use crate::support::*;

#[test]
fn default_job_matches_a_plain_pytorch_loop_for_100_steps() {
    let dir = tempdir();
    let steps = 100usize;

    // Initial weights, made by the host's own model code.
    let generator = generator_lock();
    tch::manual_seed(123);
    let vars = nn::VarStore::new(tch::Device::Cpu);
    let _model = Mlp::new(&vars.root(), DIGITS_MLP, 0.0);
    let init = dir.path().join("init.safetensors");
    host::engine::weights::save(&vars, &init).unwrap();
    drop(generator);

    // The training examples and the batches the host will draw (seed 42, batch 64).
    let digits = data::load_digits().unwrap();
    let (train, _) = data::split(&digits, 20.0, None, None);
    let train_file = dir.path().join("train.safetensors");
    Tensor::write_safetensors(&[("input", train.field("input").unwrap()), ("labels", train.labels())], &train_file)
        .unwrap();
    let mut batches: Vec<Vec<i64>> = Vec::new();
    for epoch in 0.. {
        let order = data::epoch_order(train.len(), 42, epoch);
        batches.extend(order.chunks(64).map(<[i64]>::to_vec));
        if batches.len() >= steps {
            break;
        }
    }
    batches.truncate(steps);

    // Evaluated once at the end (do_eval), so the 80% split above is what trains.
    let args =
        ["--init-weights", path_str(&init), "--max-steps", "100", "--logging-steps", "1", "--eval-strategy", "no"];
    let run = host(dir.path(), &[&args[..], &["--do-eval", "true"]].concat());
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let host_losses: Vec<f64> =
        log_history(dir.path()).iter().filter_map(|e| e.get("loss").and_then(|v| v.as_f64())).collect();

    let spec = serde_json::json!({
        "init_weights": init, "train": train_file, "batches": batches, "widths": DIGITS_MLP,
        "learning_rate": 2e-3, "weight_decay": 0.01, "adam_beta1": 0.9, "adam_beta2": 0.999,
        "adam_epsilon": 1e-8, "max_grad_norm": 1.0,
    });
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out_file = dir.path().join("torch.json");
    let status = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("scripts/reference/pytorch_loop.py"))
        .args([&spec_file, &out_file])
        .status()
        .expect("run the venv's python (scripts/setup.sh makes it)");
    assert!(status.success());
    let torch: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    let torch_losses: Vec<f64> = serde_json::from_value(torch["losses"].clone()).unwrap();

    assert_eq!((host_losses.len(), torch_losses.len()), (steps, steps));
    let worst = host_losses.iter().zip(&torch_losses).map(|(h, t)| (h - t).abs()).fold(0.0, f64::max);
    eprintln!("largest loss difference over {steps} steps: {worst:e}");
    for (step, (h, t)) in host_losses.iter().zip(&torch_losses).enumerate() {
        assert!((h - t).abs() < 1e-5, "step {}: host {h}, PyTorch {t}", step + 1);
    }
}
