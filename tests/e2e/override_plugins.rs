//! The plugin kinds added in plugin-api 1.6 (metrics, optimizers, schedules, batch
//! transforms), through their stock plugins, each against its reference library
//! (tests/references/override_plugins.py): scikit-learn, torch.optim, torchvision.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::support::*;

/// Runs the oracle; its message is the failure.
fn oracle(args: &[&str]) {
    venv_oracle(Path::new("tests/references/override_plugins.py"), args);
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn classification_report_equals_scikit_learn_and_picks_the_best_model() {
    let dir = tempdir();
    let report = plugin("classification_report");
    let run = host(
        dir.path(),
        &[
            "--plugin",
            path_str(&report),
            "--plugin-config",
            "classification_report.top_k=[2, 3]",
            "--max-steps",
            "30",
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "10",
            "--save-steps",
            "10",
            "--metric-for-best-model",
            "macro_f1",
            "--load-best-model-at-end",
            "--do-predict",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let output = dir.path().join("output");
    oracle(&[
        "report",
        path_str(&output.join("predictions.jsonl")),
        path_str(&output.join("predictions.classification_report.json")),
        path_str(&output.join("predict_results.json")),
        "2",
        "3",
    ]);
    // Each evaluation logged the plugin's metrics, and the best of them chose the model.
    let evaluations: Vec<serde_json::Value> =
        log_history(dir.path()).into_iter().filter(|e| e.get("eval_macro_f1").is_some()).collect();
    assert_eq!(evaluations.len(), 3, "{evaluations:?}");
    let best = evaluations.iter().map(|e| e["eval_macro_f1"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    let state = json_file(&output.join("trainer_state.json"));
    assert_eq!(state["best_metric"].as_f64(), Some(best));
    assert!(output.join("classification_report.json").is_file(), "the last evaluation's report");

    // host eval on a checkpoint loads the metric plugin from the run's configuration.
    let eval = host(dir.path(), &["eval", "--checkpoint", "output/checkpoint-30"]);
    assert_eq!(eval.code, 0, "{}", eval.stderr);
    assert!(eval.stdout.contains("eval_macro_f1") && eval.stdout.contains("classification_report report: {"));
}

/// Sets `param`'s gradient to `grad`.
fn set_grad(param: &Tensor, grad: &Tensor) {
    let mut current = param.grad();
    if current.defined() {
        let _ = current.zero_();
    }
    (param * grad).sum(Kind::Float).backward();
}

#[test]
fn muon_equals_torch_muon_with_adamw_and_its_state_resumes_exactly() {
    let lock = generator_lock();
    let dir = tempdir();
    let plugin = host::plugins::Plugin::load(&plugin("muon")).unwrap();
    // A tall and a wide matrix (Muon), a bias and a norm weight (AdamW, no decay).
    let shapes: [(&str, &[i64]); 4] =
        [("fc1.weight", &[16, 12]), ("fc1.bias", &[16]), ("fc2.weight", &[5, 16]), ("norm.weight", &[16])];
    let lrs = [0.02, 0.015, 0.01, 0.005];
    tch::manual_seed(3);
    let init: Vec<Tensor> = shapes.iter().map(|(_, s)| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu))).collect();
    let grads: Vec<Vec<Tensor>> = lrs
        .iter()
        .map(|_| shapes.iter().map(|(_, s)| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu))).collect())
        .collect();
    drop(lock);
    let decays: Vec<f64> =
        shapes.iter().map(|(n, _)| if n.ends_with("weight") && !n.starts_with("norm") { 0.1 } else { 0.0 }).collect();

    // Runs `steps` of the optimizer from `params`.
    let run = |optimizer: &mut host::plugins::PluginOptimizer, params: &[Tensor], steps: std::ops::Range<usize>| {
        let named: plugin_api::Tensors =
            shapes.iter().zip(params).map(|((n, _), p)| ((*n).to_owned(), p.shallow_clone())).collect();
        for step in steps {
            for (param, grad) in params.iter().zip(&grads[step]) {
                set_grad(param, grad);
            }
            optimizer.step(&named, &decays, lrs[step]).unwrap();
        }
    };
    let leaves = || -> Vec<Tensor> { init.iter().map(|t| t.copy().set_requires_grad(true)).collect() };
    let straight = leaves();
    let mut optimizer = plugin.create_optimizer("muon", &serde_json::json!({}), "{}").unwrap();
    run(&mut optimizer, &straight, 0..4);

    // Two steps, the state saved, then a new optimizer with it takes the last two.
    let resumed = leaves();
    let mut first = plugin.create_optimizer("muon", &serde_json::json!({}), "{}").unwrap();
    run(&mut first, &resumed, 0..2);
    let (scalars, tensors) = first.state().unwrap();
    let copies: plugin_api::Tensors = tensors.iter().map(|(n, t)| (n.to_owned(), t.copy())).collect();
    let mut second = plugin.create_optimizer("muon", &serde_json::json!({}), "{}").unwrap();
    second.load_state(&scalars, &copies).unwrap();
    run(&mut second, &resumed, 2..4);
    for (a, b) in straight.iter().zip(&resumed) {
        assert!(a.equal(b), "a resumed optimizer takes the same steps, bit for bit");
    }

    let mut case: Vec<(String, Tensor)> = Vec::new();
    for (i, (name, _)) in shapes.iter().enumerate() {
        case.push((format!("init.{name}"), init[i].shallow_clone()));
        for (step, grads) in grads.iter().enumerate() {
            case.push((format!("grad{step}.{name}"), grads[i].shallow_clone()));
        }
    }
    Tensor::write_safetensors(&case, dir.path().join("case.safetensors")).unwrap();
    let host_result: Vec<(String, Tensor)> =
        shapes.iter().zip(&straight).map(|((n, _), t)| ((*n).to_owned(), t.detach())).collect();
    Tensor::write_safetensors(&host_result, dir.path().join("host.safetensors")).unwrap();
    let names: Vec<&str> = shapes.iter().map(|(n, _)| *n).collect();
    let weight_decay: serde_json::Map<String, serde_json::Value> =
        names.iter().zip(&decays).map(|(n, d)| ((*n).to_owned(), serde_json::json!(d))).collect();
    let config = serde_json::json!({ "names": names, "lrs": lrs, "decay": 0.1, "weight_decay": weight_decay });
    std::fs::write(dir.path().join("case.json"), config.to_string()).unwrap();
    oracle(&["muon", path_str(dir.path())]);
}

#[test]
fn one_cycle_rates_equal_pytorch_one_cycle_lr() {
    let one_cycle = plugin("one_cycle");
    for (config, python) in [
        ("one_cycle.pct_start=0.25", r#"{"pct_start": 0.25}"#),
        (
            r#"one_cycle.anneal_strategy="linear""#,
            r#"{"anneal_strategy": "linear", "three_phase": true, "div_factor": 10.0}"#,
        ),
    ] {
        let dir = tempdir();
        let mut args = vec![
            "--plugin",
            path_str(&one_cycle),
            "--lr-scheduler-type",
            "plugin:one_cycle",
            "--learning-rate",
            "0.05",
            "--max-steps",
            "25",
            "--logging-steps",
            "1",
            "--save-strategy",
            "no",
            "--plugin-config",
            config,
        ];
        if python.contains("three_phase") {
            args.extend([
                "--plugin-config",
                "one_cycle.three_phase=true",
                "--plugin-config",
                "one_cycle.div_factor=10.0",
            ]);
        }
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let log = dir.path().join("output/log_history.jsonl");
        oracle(&["one_cycle", path_str(&log), "25", "0.05", python]);
    }
}

#[test]
fn mixup_and_cutmix_equal_torchvision() {
    let _lock = generator_lock();
    let dir = tempdir();
    let plugin = host::plugins::Plugin::load(&plugin("mixup")).unwrap();
    tch::manual_seed(11);
    let mut batch = plugin_api::Tensors::new();
    batch.insert("input", Tensor::rand([6, 64], (Kind::Float, tch::Device::Cpu)));
    batch.insert("labels", Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9]));
    let batch_file: Vec<(String, Tensor)> = batch.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
    Tensor::write_safetensors(&batch_file, dir.path().join("batch.safetensors")).unwrap();
    use host::engine::data::transform::{BatchTransform, TransformContext};
    let context = TransformContext { global_step: 0, epoch: 0.0, num_labels: Some(10) };
    let batch = host::engine::data::Batch::from_plugin(batch).unwrap();
    let (seed, alpha) = (7, 0.4);
    for mode in ["mixup", "cutmix"] {
        let config = serde_json::json!({ "mode": mode, "alpha": alpha, "image_shape": [8, 8] });
        let mut transform = plugin.create_batch_transform("mixup", &config, "{}").unwrap();
        tch::manual_seed(seed);
        let mixed = transform.transform(&batch, &context).unwrap().to_plugin();
        assert_eq!(mixed.get("labels").unwrap().size(), [6, 10], "{mode}: labels become probabilities");
        let out: Vec<(String, Tensor)> = mixed.iter().map(|(n, t)| (n.to_owned(), t.shallow_clone())).collect();
        Tensor::write_safetensors(&out, dir.path().join(format!("{mode}.safetensors"))).unwrap();
    }
    let case = serde_json::json!({ "seed": seed, "alpha": alpha, "num_classes": 10 });
    std::fs::write(dir.path().join("case.json"), case.to_string()).unwrap();
    oracle(&["mixup", path_str(dir.path())]);
}

/// A run with the three stock plugins and the recorder callback, which can stop it.
fn override_run(dir: &Path, extra: &[&str]) -> Run {
    let (muon, one_cycle, mixup) = (plugin("muon"), plugin("one_cycle"), plugin("mixup"));
    let base = [
        "--plugin",
        path_str(&muon),
        "--plugin",
        path_str(&one_cycle),
        "--plugin",
        path_str(&mixup),
        "--optim",
        "plugin:muon",
        "--lr-scheduler-type",
        "plugin:one_cycle",
        "--learning-rate",
        "0.02",
        "--max-steps",
        "12",
        "--save-steps",
        "5",
        "--logging-steps",
        "2",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "6",
    ];
    run_with_recorder(dir, &base, extra)
}

#[test]
fn a_plugin_optimizer_schedule_and_transform_resume_exactly() {
    let straight = tempdir();
    let run = override_run(straight.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for line in ["optimizer: muon", "lr schedule: one_cycle", "batch transform: mixup"] {
        assert!(run.stderr.contains(line), "{line}:\n{}", run.stderr);
    }
    let resumed = tempdir();
    assert_eq!(override_run(resumed.path(), &["--plugin-config", "recorder.stop_at_step=7"]).code, 0);
    let run = override_run(resumed.path(), &["--resume-from-checkpoint", "output/checkpoint-5"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(history_without_timings(straight.path()), history_without_timings(resumed.path()));
    let weights = |dir: &Path| std::fs::read(dir.join("output/model.safetensors")).unwrap();
    assert!(weights(straight.path()) == weights(resumed.path()), "final weights differ");
    // The checkpoint holds the plugin optimizer's state.
    let saved = Tensor::read_safetensors(resumed.path().join("output/checkpoint-5/optimizer.safetensors")).unwrap();
    assert!(
        saved.iter().any(|(n, _)| n.ends_with(".momentum_buffer")),
        "{:?}",
        saved.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
}

#[test]
fn override_plugin_mistakes_are_one_line_errors() {
    let dir = tempdir();
    let (muon, report) = (plugin("muon"), plugin("classification_report"));
    let cases: [(&[&str], &str); 5] = [
        (
            &["--plugin", path_str(&muon), "--optim", "plugin:lion"],
            "no loaded plugin provides an optimizer named 'lion' (available: muon)",
        ),
        (
            &["--plugin", path_str(&muon), "--optim", "plugin:muon", "--optim-args", "momentum=0.9"],
            "optim_args configure the built-in ones; optim plugin:muon takes its settings from [plugin_config.muon]",
        ),
        (&["--lr-scheduler-type", "plugin:"], "plugin: needs the schedule component's name"),
        (
            &["--plugin", path_str(&report), "--metric", "accuracy"],
            "no loaded plugin provides a metric named 'accuracy' (available: classification_report)",
        ),
        (
            &[
                "--plugin",
                path_str(&report),
                "--eval-strategy",
                "steps",
                "--eval-steps",
                "5",
                "--max-steps",
                "5",
                "--metric-for-best-model",
                "top_9_accuracy",
            ],
            "metric_for_best_model 'eval_top_9_accuracy' is not among this model's evaluation metrics",
        ),
    ];
    for (args, expected) in cases {
        let run = host(dir.path(), args);
        run.assert_clean_error(2, expected);
    }
    let inspect = host(dir.path(), &["plugins", "inspect", path_str(&report)]);
    assert!(inspect.stdout.contains("  metric           classification_report"), "{}", inspect.stdout);
    assert!(inspect.stdout.contains("top_k"), "{}", inspect.stdout);
}

/// A resnet run on the digits files in `dir`, with the recorder callback (which can stop
/// it).
fn resnet_run(dir: &Path, extra: &[&str]) -> Run {
    let resnet = plugin("resnet");
    let base = [
        "--plugin",
        path_str(&resnet),
        "--model",
        "plugin:resnet",
        "--train-file",
        "train.safetensors",
        "--eval-file",
        "eval.safetensors",
        "--learning-rate",
        "0.003",
        "--per-device-train-batch-size",
        "32",
        "--max-steps",
        "80",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "40",
        "--save-steps",
        "30",
        "--logging-steps",
        "10",
    ];
    run_with_recorder(dir, &base, extra)
}

#[test]
fn a_resnet_plugin_trains_on_the_digits_and_equals_torchvision_and_resumes_exactly() {
    let straight = tempdir();
    oracle(&["digits", path_str(straight.path())]);
    let run = resnet_run(straight.path(), &["--do-predict"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("model: resnet (plugin)"), "{}", run.stderr);
    let accuracy = results(straight.path())["eval_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.85, "80 steps reach {accuracy}");
    oracle(&["resnet", path_str(straight.path())]);

    // Batch norm's running statistics are buffers: saved, restored, not trained.
    let resumed = tempdir();
    oracle(&["digits", path_str(resumed.path())]);
    assert_eq!(resnet_run(resumed.path(), &["--plugin-config", "recorder.stop_at_step=45"]).code, 0);
    let run = resnet_run(resumed.path(), &["--resume-from-checkpoint", "output/checkpoint-30"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(history_without_timings(straight.path()), history_without_timings(resumed.path()));
    let weights = |dir: &Path| std::fs::read(dir.join("output/model.safetensors")).unwrap();
    assert!(weights(straight.path()) == weights(resumed.path()), "final weights differ");
    let saved = Tensor::read_safetensors(straight.path().join("output/model.safetensors")).unwrap();
    assert!(saved.iter().any(|(n, _)| n == "layer2.0.downsample.1.running_var"));
}

/// weighted_ce takes the class probabilities mixup makes: PyTorch's soft-target cross
/// entropy, -sum_c w_c p_c log_softmax_c per row, summed over num_items_in_batch in
/// training, averaged over the rows in evaluation.
#[test]
fn weighted_ce_takes_soft_labels_as_pytorch_does() {
    let plugin = host::plugins::Plugin::load(&plugin("weighted_ce")).unwrap();
    let weights = [1.0f32, 2.0, 0.5];
    let config = serde_json::json!({ "weights": weights });
    let mut loss = plugin.create_loss("weighted_ce", &config).unwrap();
    let logits = Tensor::from_slice(&[2.0f32, 0.5, -1.0, 0.1, 0.2, 3.0, -0.4, 1.5, 0.0]).view([3, 3]);
    let labels = Tensor::from_slice(&[0.7f32, 0.3, 0.0, 0.0, 0.0, 1.0, 0.2, 0.2, 0.6]).view([3, 3]);
    let mut outputs = plugin_api::Tensors::new();
    outputs.insert("logits", logits.shallow_clone());
    let mut batch = plugin_api::Tensors::new();
    batch.insert("labels", labels.shallow_clone());
    // By hand: each row's weighted soft cross entropy.
    let rows: Vec<f64> = (0..3)
        .map(|r| {
            let log_p = Vec::<f32>::try_from(logits.get(r).log_softmax(0, Kind::Float)).unwrap();
            let p = Vec::<f32>::try_from(labels.get(r)).unwrap();
            -(0..3).map(|c| (weights[c] * p[c] * log_p[c]) as f64).sum::<f64>()
        })
        .collect();
    let sum: f64 = rows.iter().sum();
    let eval = loss.compute_loss(&outputs, &batch, None).unwrap().double_value(&[]);
    assert!((eval - sum / 3.0).abs() < 1e-6, "{eval} vs {}", sum / 3.0);
    let train = loss.compute_loss(&outputs, &batch, Some(6)).unwrap().double_value(&[]);
    assert!((train - sum / 6.0).abs() < 1e-6, "{train} vs {}", sum / 6.0);
}
