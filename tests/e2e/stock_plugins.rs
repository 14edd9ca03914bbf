//! Stock plugins beyond weighted_ce, end to end.

use crate::support::*;

fn final_step(dir: &std::path::Path) -> i64 {
    log_history(dir).last().unwrap()["step"].as_i64().unwrap()
}

#[test]
fn early_stopping_stops_after_patience_evaluations_without_improvement() {
    // A threshold of 1.0 makes every evaluation after the first "no improvement" (eval_loss
    // is below 1 here): with patience 2, training stops at the third evaluation (epoch 3).
    let dir = tempdir();
    let stopping = plugin("early_stopping");
    let run = host(
        dir.path(),
        &[
            "--plugin",
            path_str(&stopping),
            "--metric-for-best-model",
            "loss",
            "--plugin-config",
            "early_stopping.early_stopping_patience=2",
            "--plugin-config",
            "early_stopping.early_stopping_threshold=1.0",
        ],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert_eq!(final_step(dir.path()), 69);

    // Without the threshold, the loss keeps improving for a while: training goes further.
    let dir = tempdir();
    let run = host(dir.path(), &["--plugin", path_str(&stopping), "--metric-for-best-model", "loss"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(final_step(dir.path()) > 69);
}

#[test]
fn early_stopping_counter_survives_resume() {
    let stopping = plugin("early_stopping");
    let fixtures = plugin("test_fixtures");
    let base = [
        "--plugin",
        path_str(&stopping),
        "--plugin",
        path_str(&fixtures),
        "--loss",
        "builtin",
        "--callback",
        "early_stopping",
        "--callback",
        "recorder",
        "--plugin-config",
        "recorder.path=events.txt",
        "--metric-for-best-model",
        "loss",
        "--save-strategy",
        "epoch",
        "--plugin-config",
        "early_stopping.early_stopping_patience=3",
        "--plugin-config",
        "early_stopping.early_stopping_threshold=1.0",
    ];
    let straight = tempdir();
    assert_eq!(host(straight.path(), &base).code, 0);
    assert_eq!(final_step(straight.path()), 92, "stops at the fourth evaluation");

    let resumed = tempdir();
    let mut first = base.to_vec();
    first.extend(["--plugin-config", "recorder.stop_at_step=46"]);
    assert_eq!(host(resumed.path(), &first).code, 0);
    let mut again = base.to_vec();
    again.extend(["--resume-from-checkpoint", "latest"]);
    let run = host(resumed.path(), &again);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    // A counter reset to 0 would have let it train to step 115.
    assert_eq!(final_step(resumed.path()), 92);
}

#[test]
fn early_stopping_config_and_requirements_are_checked() {
    let dir = tempdir();
    let stopping = plugin("early_stopping");
    host(
        dir.path(),
        &[
            "--plugin",
            path_str(&stopping),
            "--plugin-config",
            "early_stopping.early_stopping_patience=0",
            "--metric-for-best-model",
            "loss",
        ],
    )
    .assert_clean_error(2, "early_stopping_patience must be at least 1 (got 0)");
    host(dir.path(), &["--plugin", path_str(&stopping)])
        .assert_clean_error(2, "early_stopping needs metric_for_best_model");
    host(dir.path(), &["--plugin", path_str(&stopping), "--plugin-config", "early_stopping.patience=2"])
        .assert_clean_error(
            2,
            "unknown field `patience`, expected `early_stopping_patience` or `early_stopping_threshold`",
        );
}

#[test]
fn plugins_are_found_by_name_and_described() {
    let dir = tempdir();
    plugin("weighted_ce"); // built next to the host binary
    let run = host(dir.path(), &["--plugin", "weighted_ce", "--max-steps", "2", "--eval-strategy", "no"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("loss: weighted_ce (plugin weighted_ce)"));

    let list = host(dir.path(), &["plugins", "list"]);
    assert_eq!(list.code, 0, "stderr:\n{}", list.stderr);
    for name in ["weighted_ce", "early_stopping"] {
        assert!(list.stdout.lines().any(|l| l.starts_with(name)), "{name} not listed:\n{}", list.stdout);
    }

    let inspect = host(dir.path(), &["plugins", "inspect", "early_stopping"]);
    assert_eq!(inspect.code, 0, "stderr:\n{}", inspect.stderr);
    assert!(inspect.stdout.starts_with("early_stopping 0.1.0\n"), "{}", inspect.stdout);
    assert!(inspect.stdout.contains(&format!("built against: plugin-api {}, torch 2.11.0", plugin_api::API_VERSION)));
    assert!(inspect.stdout.contains("callback         early_stopping"), "{}", inspect.stdout);
    // Declared config keys: type, default and help (the field's doc comment).
    assert!(
        inspect.stdout.contains(
            "      early_stopping_patience   integer, default 1\n                                  Evaluations without improvement"
        ),
        "{}",
        inspect.stdout
    );
    assert!(inspect.stdout.contains("early_stopping_threshold  number, default 0.0"), "{}", inspect.stdout);
    let timer = host(dir.path(), &["plugins", "inspect", path_str(&plugin("timer"))]);
    assert!(timer.stdout.contains("max_seconds  number, required"), "{}", timer.stdout);
    let guard = host(dir.path(), &["plugins", "inspect", path_str(&plugin("nan_guard"))]);
    assert!(guard.stdout.contains("mode  one of \"skip\", \"stop\", default \"skip\""), "{}", guard.stdout);
    let throughput = host(dir.path(), &["plugins", "inspect", path_str(&plugin("throughput"))]);
    assert!(throughput.stdout.contains("callback         throughput\n    no config keys\n"), "{}", throughput.stdout);
    // A config type without the JsonSchema derive still loads; its keys are undeclared.
    let fixtures = host(dir.path(), &["plugins", "inspect", path_str(&plugin("test_fixtures"))]);
    assert!(fixtures.stdout.contains("callback         recorder\n    config keys not declared"), "{}", fixtures.stdout);

    host(dir.path(), &["--plugin", "no_such_plugin"])
        .assert_clean_error(2, "no plugin named 'no_such_plugin' (libno_such_plugin.so) in");
    // A near miss names the plugin meant.
    host(dir.path(), &["--plugin", "weighted_c"]).assert_clean_error(2, "(did you mean 'weighted_ce'?)");

    // HOST_PLUGIN_PATH comes first.
    let own = tempdir();
    std::fs::copy(plugin("weighted_ce"), own.path().join("libmine.so")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .current_dir(dir.path())
        .args(["plugins", "inspect", "mine"])
        .env("HOST_PLUGIN_PATH", own.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains(&format!("file:          {}", own.path().join("libmine.so").display())));
}

fn tensor(value: &serde_json::Value) -> tch::Tensor {
    let rows = value.as_array().unwrap();
    if rows[0].is_array() {
        let rows: Vec<tch::Tensor> = rows.iter().map(tensor).collect();
        tch::Tensor::stack(&rows, 0)
    } else if rows[0].is_i64() {
        let values: Vec<i64> = serde_json::from_value(value.clone()).unwrap();
        tch::Tensor::from_slice(&values)
    } else {
        let values: Vec<f32> = serde_json::from_value(value.clone()).unwrap();
        tch::Tensor::from_slice(&values)
    }
}

#[test]
fn stock_losses_equal_pytorch() {
    let fixture: serde_json::Value = serde_json::from_str(include_str!("../fixtures/stock_losses.json")).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let lib = host::plugins::Plugin::load(&plugin(case["plugin"].as_str().unwrap())).unwrap();
        let mut loss = lib.create_loss(case["component"].as_str().unwrap(), &case["config"]).unwrap();
        let logits = tensor(&case["logits"]).set_requires_grad(true);
        let mut outputs = plugin_api::Tensors::new();
        outputs.insert("logits", logits.shallow_clone());
        let mut batch = plugin_api::Tensors::new();
        for (key, value) in case["batch"].as_object().unwrap() {
            batch.insert(key.as_str(), tensor(value));
        }
        let value = loss.compute_loss(&outputs, &batch, case["num_items_in_batch"].as_i64()).unwrap();
        let (got, want) = (value.double_value(&[]), case["expected"].as_f64().unwrap());
        assert!((got - want).abs() <= 1e-6, "{name}: got {got}, PyTorch {want}");
        // Gradients flow back through the plugin's ops.
        value.backward();
        assert!(logits.grad().abs().sum(tch::Kind::Float).double_value(&[]) > 0.0, "{name}: no gradient");

        // Class losses also take a token model's shapes, logits [1, N, C] for labels [1, N]:
        // the same items, so the same value.
        if ["weighted_ce", "focal_loss"].contains(&case["plugin"].as_str().unwrap()) && logits.dim() == 2 {
            let mut outputs = plugin_api::Tensors::new();
            outputs.insert("logits", logits.detach().unsqueeze(0));
            let mut tokens = plugin_api::Tensors::new();
            for (key, value) in case["batch"].as_object().unwrap() {
                tokens.insert(key.as_str(), tensor(value).unsqueeze(0));
            }
            let value = loss.compute_loss(&outputs, &tokens, case["num_items_in_batch"].as_i64()).unwrap();
            assert!((value.double_value(&[]) - want).abs() <= 1e-6, "{name} over token shapes: {value:?}");
        }
    }
}

#[test]
fn stock_classification_losses_train_the_default_job() {
    for (plugin_name, component) in
        [("focal_loss", "focal_loss"), ("mse", "mse"), ("huber", "smooth_l1"), ("bce_with_logits", "bce_with_logits")]
    {
        let dir = tempdir();
        let lib = plugin(plugin_name);
        let run = host(
            dir.path(),
            &[
                "--plugin",
                path_str(&lib),
                "--loss",
                component,
                "--num-train-epochs",
                "3",
                "--logging-steps",
                "5",
                "--save-strategy",
                "no",
            ],
        );
        assert_eq!(run.code, 0, "{component}: stderr:\n{}", run.stderr);
        let accuracy = results(dir.path())["eval_accuracy"].as_f64().unwrap();
        assert!(accuracy > 0.85, "{component}: eval_accuracy {accuracy}");
    }
}

#[test]
fn stock_loss_configs_are_checked() {
    let dir = tempdir();
    let cases = [
        ("focal_loss", "focal_loss.gamma=-1", "gamma must be >= 0 (got -1)"),
        ("focal_loss", "focal_loss.alpha=[1,2]", "alpha has 2 entries but the model has 10 classes"),
        ("huber", "huber.delta=0", "delta must be > 0 (got 0)"),
        ("bce_with_logits", "bce_with_logits.pos_weight=[1]", "pos_weight has 1 entries but the model has 10 outputs"),
        ("kl_div", "kl_div.alpha=2", "alpha must be in [0, 1] (got 2)"),
        ("mse", "mse.reduction=\"sum\"", "unknown field `reduction`"),
    ];
    for (plugin_name, config, message) in cases {
        let lib = plugin(plugin_name);
        let mut args = vec!["--plugin", path_str(&lib), "--plugin-config", config, "--max-steps", "1"];
        if plugin_name == "huber" {
            args.extend(["--loss", "huber"]);
        }
        host(dir.path(), &args).assert_clean_error(2, message);
    }
    // kl_div needs the teacher's logits in the batch, which the digits job does not have.
    let lib = plugin("kl_div");
    host(dir.path(), &["--plugin", path_str(&lib), "--max-steps", "1"])
        .assert_clean_error(1, "no tensor named 'teacher_logits' (there are: input, labels)");
}

#[test]
fn csv_logger_writes_one_row_per_log_event_with_stable_columns() {
    let dir = tempdir();
    let lib = plugin("csv_logger");
    let run = host(dir.path(), &["--plugin", path_str(&lib), "--num-train-epochs", "2", "--logging-steps", "10"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let text = std::fs::read_to_string(dir.path().join("output/log.csv")).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0],
        [
            "step",
            "epoch",
            "loss",
            "grad_norm",
            "learning_rate",
            "eval_loss",
            "eval_accuracy",
            "train_loss",
            "train_runtime"
        ]
    );
    let history = log_history(dir.path());
    assert_eq!(rows.len() - 1, history.len(), "one row per log event");
    for (row, entry) in rows[1..].iter().zip(&history) {
        assert_eq!(row.len(), 9, "stable columns");
        assert_eq!(row[0], entry["step"].to_string());
        for (i, column) in ["loss", "eval_accuracy"].iter().enumerate() {
            let cell = row[[2, 6][i]];
            match entry.get(*column).and_then(|v| v.as_f64()) {
                Some(value) => assert_eq!(cell.parse::<f64>().unwrap(), value),
                None => assert_eq!(cell, ""),
            }
        }
    }
    // Custom columns and path.
    let run = host(
        dir.path(),
        &[
            "--plugin",
            path_str(&lib),
            "--plugin-config",
            "csv_logger.columns=[\"step\",\"loss\"]",
            "--plugin-config",
            "csv_logger.path=\"custom.csv\"",
            "--max-steps",
            "4",
            "--logging-steps",
            "2",
            "--eval-strategy",
            "no",
        ],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let text = std::fs::read_to_string(dir.path().join("custom.csv")).unwrap();
    assert_eq!(text.lines().next(), Some("step,loss"));
    assert_eq!(text.lines().count(), 4, "header, steps 2 and 4, final metrics");
}

#[test]
fn timer_stops_with_a_checkpoint_when_the_budget_is_spent() {
    let dir = tempdir();
    let lib = plugin("timer");
    let started = std::time::Instant::now();
    let run = host(
        dir.path(),
        &[
            "--plugin",
            path_str(&lib),
            "--plugin-config",
            "timer.max_seconds=1.0",
            "--num-train-epochs",
            "100000",
            "--save-strategy",
            "no",
            "--eval-strategy",
            "no",
        ],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(started.elapsed().as_secs() < 60);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("output/trainer_state.json")).unwrap()).unwrap();
    let step = state["global_step"].as_i64().unwrap();
    assert!(step > 0 && step < state["max_steps"].as_i64().unwrap());
    let checkpoint = dir.path().join(format!("output/checkpoint-{step}"));
    host::engine::checkpoint::verify(&checkpoint).unwrap();
    host(dir.path(), &["--plugin", path_str(&lib), "--plugin-config", "timer.max_seconds=0"])
        .assert_clean_error(2, "max_seconds must be > 0 (got 0)");
    host(dir.path(), &["--plugin", path_str(&lib)]).assert_clean_error(2, "missing field `max_seconds`");
}

#[test]
fn tensorboard_writes_event_files_that_tensorboard_reads() {
    let dir = tempdir();
    let lib = plugin("tensorboard");
    let run = host(dir.path(), &["--plugin", path_str(&lib), "--num-train-epochs", "2", "--logging-steps", "5"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let reader = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
"#;
    let output = std::process::Command::new(repo().join(".venv/bin/python"))
        .args(["-c", reader])
        .arg(dir.path().join("output/runs"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let scalars: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let history = log_history(dir.path());
    for (key, tag) in [
        ("loss", "train/loss"),
        ("learning_rate", "train/learning_rate"),
        ("grad_norm", "train/grad_norm"),
        ("eval_accuracy", "eval/accuracy"),
    ] {
        let expected: Vec<(i64, f64)> =
            history.iter().filter_map(|e| Some((e["step"].as_i64()?, e.get(key)?.as_f64()?))).collect();
        let got: Vec<(i64, f64)> =
            scalars[tag].as_array().unwrap().iter().map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap())).collect();
        assert_eq!(got.len(), expected.len(), "{tag}");
        for ((gs, gv), (es, ev)) in got.iter().zip(&expected) {
            assert_eq!(gs, es, "{tag}");
            assert!((gv - ev).abs() <= 1e-6 * ev.abs().max(1.0), "{tag} at {gs}: {gv} vs {ev}");
        }
    }
}

#[test]
fn nan_guard_skips_or_stops_on_non_finite_gradients() {
    let fixtures = plugin("test_fixtures");
    let guard = plugin("nan_guard");
    // The fixture loss returns NaN on its third call: without a guard the weights are lost.
    let base = [
        "--plugin",
        path_str(&fixtures),
        "--loss",
        "nan_on_call",
        "--callback",
        "misbehave",
        "--plugin-config",
        "misbehave.event=none",
        "--plugin-config",
        "nan_on_call.nan_on_call=3",
        "--max-steps",
        "40",
        "--logging-steps",
        "10",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "40",
    ];
    // Without a guard the host itself skips the step, with a warning and a count in the
    // logs, so the weights are not lost either.
    let unguarded = tempdir();
    let run = host(unguarded.path(), &base);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("step 3: the loss or the gradient norm is not finite"), "{}", run.stderr);
    assert!(results(unguarded.path())["eval_loss"].as_f64().unwrap().is_finite());
    let counted: Vec<f64> =
        log_history(unguarded.path()).iter().filter_map(|e| e.get("nonfinite_steps")?.as_f64()).collect();
    assert_eq!(counted, [1.0]);

    let skipping = tempdir();
    let mut args = base.to_vec();
    args.extend(["--plugin", path_str(&guard), "--callback", "nan_guard"]);
    let run = host(skipping.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("nan_guard: non-finite gradients at step 3: update skipped"), "{}", run.stderr);
    let results = results(skipping.path());
    assert!(results["eval_loss"].as_f64().unwrap().is_finite());
    assert!(results["eval_accuracy"].as_f64().unwrap() > 0.8);
    let skipped: Vec<f64> =
        log_history(skipping.path()).iter().filter_map(|e| e.get("nan_guard_skipped")?.as_f64()).collect();
    assert_eq!(skipped, [1.0, 1.0, 1.0, 1.0]);

    let stopping = tempdir();
    let mut args = base.to_vec();
    args.extend([
        "--plugin",
        path_str(&guard),
        "--callback",
        "nan_guard",
        "--plugin-config",
        "nan_guard.mode=\"stop\"",
    ]);
    let run = host(stopping.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    host::engine::checkpoint::verify(&stopping.path().join("output/checkpoint-3")).unwrap();
    assert_eq!(log_history(stopping.path()).last().unwrap()["step"], 3);

    host(stopping.path(), &["--plugin", path_str(&guard), "--plugin-config", "nan_guard.mode=\"retry\""])
        .assert_clean_error(2, "unknown variant `retry`, expected `skip` or `stop`");
}

#[test]
fn throughput_adds_samples_per_second_to_training_logs() {
    let dir = tempdir();
    let lib = plugin("throughput");
    let run = host(
        dir.path(),
        &["--plugin", path_str(&lib), "--max-steps", "30", "--logging-steps", "10", "--eval-strategy", "no"],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let speeds: Vec<f64> =
        log_history(dir.path()).iter().filter_map(|e| e.get("throughput_samples_per_second")?.as_f64()).collect();
    assert_eq!(speeds.len(), 3, "one per training log event");
    assert!(speeds.iter().all(|s| *s > 100.0), "{speeds:?}");
}

#[test]
fn ema_evaluates_with_the_average_and_resumes_exactly() {
    let ema = plugin("ema");
    let fixtures = plugin("test_fixtures");
    let base = [
        "--max-steps",
        "40",
        "--logging-steps",
        "5",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "10",
        "--save-strategy",
        "steps",
        "--save-steps",
        "20",
    ];
    let values = |dir: &std::path::Path, key: &str| -> Vec<f64> {
        log_history(dir).iter().filter_map(|e| e.get(key)?.as_f64()).collect()
    };
    let plain = tempdir();
    assert_eq!(host(plain.path(), &base).code, 0);
    let averaged = tempdir();
    let mut args = base.to_vec();
    args.extend(["--plugin", path_str(&ema), "--plugin-config", "ema.decay=0.9"]);
    let run = host(averaged.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    // Training is the same; evaluations see the averaged weights.
    assert_eq!(values(plain.path(), "loss"), values(averaged.path(), "loss"));
    assert_ne!(values(plain.path(), "eval_loss"), values(averaged.path(), "eval_loss"));
    assert!(averaged.path().join("output/checkpoint-20/callback_tensors.safetensors").is_file());
    // The final weights are the trained ones, not the average.
    assert!(
        std::fs::read(plain.path().join("output/model.safetensors")).unwrap()
            == std::fs::read(averaged.path().join("output/model.safetensors")).unwrap()
    );

    // Stop after step 25, resume from checkpoint-20: the average comes back with it.
    let resumed = tempdir();
    let mut with_recorder = args.clone();
    with_recorder.extend([
        "--plugin",
        path_str(&fixtures),
        "--loss",
        "builtin",
        "--callback",
        "ema",
        "--callback",
        "recorder",
        "--plugin-config",
        "recorder.path=events.txt",
    ]);
    let mut first = with_recorder.clone();
    first.extend(["--plugin-config", "recorder.stop_at_step=25"]);
    assert_eq!(host(resumed.path(), &first).code, 0);
    let mut again = with_recorder;
    again.extend(["--resume-from-checkpoint", "latest"]);
    let run = host(resumed.path(), &again);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("resumed from output/checkpoint-20"));
    assert_eq!(values(averaged.path(), "eval_loss"), values(resumed.path(), "eval_loss"));

    host(plain.path(), &["--plugin", path_str(&ema), "--plugin-config", "ema.decay=1"])
        .assert_clean_error(2, "decay must be in [0, 1) (got 1)");
}
