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
