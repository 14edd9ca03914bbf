//! weighted_ce against PyTorch, through the real plugin ABI.

use host::plugins::Plugin;
use plugin_api::Tensors;
use tch::{Kind, Tensor};

use crate::support::*;

#[test]
fn equals_pytorch_cross_entropy() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/weighted_ce_reference.json")).unwrap();
    let lib = Plugin::load(&plugin("weighted_ce")).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let rows: Vec<Vec<f32>> = serde_json::from_value(case["logits"].clone()).unwrap();
        let labels: Vec<i64> = serde_json::from_value(case["labels"].clone()).unwrap();
        let flat: Vec<f32> = rows.concat();
        let logits = Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64]);
        let mut outputs = Tensors::new();
        outputs.insert("logits", logits);
        let mut batch = Tensors::new();
        batch.insert("labels", Tensor::from_slice(&labels));
        let mut loss = lib.create_loss("weighted_ce", &case["config"]).unwrap();
        let got = loss.compute_loss(&outputs, &batch, case["num_items_in_batch"].as_i64()).unwrap();
        let (got, want) = (got.double_value(&[]), case["expected"].as_f64().unwrap());
        assert!((got - want).abs() <= 1e-6, "{name}: got {got}, PyTorch {want}");
    }
}

#[test]
fn autograd_flows_through_the_plugin_loss() {
    let lib = Plugin::load(&plugin("weighted_ce")).unwrap();
    let mut loss = lib.create_loss("weighted_ce", &serde_json::json!({"weights": [1.0, 2.0, 3.0]})).unwrap();
    let logits = Tensor::from_slice(&[0.2f32, -1.0, 0.5, 1.5, 0.1, -0.3]).view([2, 3]).set_requires_grad(true);
    let labels = Tensor::from_slice(&[2i64, 0]);
    let mut outputs = Tensors::new();
    outputs.insert("logits", logits.shallow_clone());
    let mut batch = Tensors::new();
    batch.insert("labels", labels.shallow_clone());
    loss.compute_loss(&outputs, &batch, None).unwrap().backward();
    // The same loss computed here, by the host's own libtorch calls.
    let reference = logits.detach().set_requires_grad(true);
    let weight = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    reference.cross_entropy_loss(&labels, Some(&weight), tch::Reduction::Mean, -100, 0.0).backward();
    let difference = (logits.grad() - reference.grad()).abs().max().double_value(&[]);
    assert!(logits.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(difference < 1e-7, "gradients differ by {difference}");
}

#[test]
fn uniform_weights_equal_the_builtin_loss() {
    let base = ["--max-steps", "30", "--logging-steps", "1", "--gradient-accumulation-steps", "2"];
    let builtin_dir = tempdir();
    let run = host(builtin_dir.path(), &base);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let plugin_dir = tempdir();
    let lib = plugin("weighted_ce");
    let mut args = base.to_vec();
    args.extend(["--plugin", path_str(&lib), "--plugin-config", "weighted_ce.weights=[1,1,1,1,1,1,1,1,1,1]"]);
    let run = host(plugin_dir.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);

    let losses = |dir: &std::path::Path, key: &str| -> Vec<f64> {
        log_history(dir).iter().filter_map(|e| e.get(key).and_then(|v| v.as_f64())).collect()
    };
    for key in ["loss", "eval_loss"] {
        let (a, b) = (losses(builtin_dir.path(), key), losses(plugin_dir.path(), key));
        assert!(!a.is_empty() && a.len() == b.len(), "{key}: {a:?} vs {b:?}");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6, "{key}: built-in {x} vs weighted_ce {y}");
        }
    }
}

#[test]
fn accumulation_with_weighted_ce_equals_one_big_batch() {
    let lib = Plugin::load(&plugin("weighted_ce")).unwrap();
    let mut loss = lib.create_loss("weighted_ce", &serde_json::json!({"weights": [1.0, 2.0, 3.0]})).unwrap();
    let _generator = generator_lock();
    tch::manual_seed(5);
    let weight = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let input = Tensor::randn([7, 4], (Kind::Float, tch::Device::Cpu));
    let labels = Tensor::from_slice(&[2i64, -100, 0, 1, 1, -100, 2]);
    let items = 5;
    let mut grad_of = |x: &Tensor, y: &Tensor| {
        let mut grad = weight.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
        let mut outputs = Tensors::new();
        outputs.insert("logits", x.matmul(&weight.tr()));
        let mut batch = Tensors::new();
        batch.insert("labels", y.shallow_clone());
        loss.compute_loss(&outputs, &batch, Some(items)).unwrap().backward();
        weight.grad().copy()
    };
    let full = grad_of(&input, &labels);
    let mut accumulated = full.zeros_like();
    for (start, len) in [(0, 3), (3, 1), (4, 3)] {
        accumulated += grad_of(&input.narrow(0, start, len), &labels.narrow(0, start, len));
    }
    let difference = (accumulated - full).abs().max().double_value(&[]);
    assert!(difference < 1e-6, "gradients differ by {difference}");
}

#[test]
fn accumulation_in_a_run_follows_the_big_batch_run() {
    let losses = |extra: &[&str]| -> Vec<f64> {
        let dir = tempdir();
        let lib = plugin("weighted_ce");
        let mut args = vec!["--plugin", path_str(&lib), "--max-steps", "8", "--logging-steps", "1"];
        args.extend_from_slice(extra);
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        log_history(dir.path()).iter().filter_map(|e| e.get("loss").and_then(|v| v.as_f64())).collect()
    };
    let big = losses(&["--per-device-train-batch-size", "64"]);
    let accumulated = losses(&["--per-device-train-batch-size", "16", "--gradient-accumulation-steps", "4"]);
    assert_eq!(big.len(), 8);
    for (step, (a, b)) in big.iter().zip(&accumulated).enumerate() {
        assert!((a - b).abs() < 1e-5, "step {}: batch 64 loss {a}, 4 x 16 accumulated {b}", step + 1);
    }
}
