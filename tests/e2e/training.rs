//! The default job and its configuration.

use crate::support::*;

#[test]
fn default_job_with_weighted_ce_reaches_accuracy() {
    let dir = tempdir();
    let run = host(dir.path(), &["--plugin", path_str(&plugin("weighted_ce"))]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("device: cpu"), "prints the device:\n{}", run.stderr);
    assert!(run.stderr.contains("loss: weighted_ce (plugin weighted_ce)"), "{}", run.stderr);
    let results = results(dir.path());
    let accuracy = results["eval_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "eval_accuracy {accuracy}");
    assert!(results["train_runtime"].as_f64().unwrap() > 0.0);
    assert!(run.stdout.contains("eval_accuracy"), "summary on stdout:\n{}", run.stdout);
    // Not a terminal: plain log lines, no progress bar, no colours.
    for terminal_only in ["\r", "\u{1b}[", "█", "steps ["] {
        assert!(!run.stderr.contains(terminal_only), "stderr has {terminal_only:?}:\n{}", run.stderr);
    }
    // One eval per epoch, 10 epochs in the default job.
    let history = log_history(dir.path());
    assert_eq!(history.iter().filter(|e| e.get("eval_loss").is_some()).count(), 10);
}

#[test]
fn builtin_loss_without_plugins_reaches_accuracy() {
    let dir = tempdir();
    let run = host(dir.path(), &[]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("loss: built-in cross entropy"));
    assert!(results(dir.path())["eval_accuracy"].as_f64().unwrap() >= 0.95);
}

#[test]
fn config_file_sets_arguments_and_flags_override_it() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("run.toml"),
        "num_train_epochs = 1\nlogging_steps = 5\nper_device_train_batch_size = 32\nmax_steps = 12\n",
    )
    .unwrap();
    let run = host(dir.path(), &["--config", "run.toml", "--max-steps", "7"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let history = log_history(dir.path());
    let steps: Vec<i64> =
        history.iter().filter(|e| e.get("loss").is_some()).map(|e| e["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![5], "logging_steps from the file, max_steps from the flag");
    let last = history.last().unwrap();
    assert_eq!(last["step"], 7);
    // HF spells flags with underscores; both work.
    let run = host(dir.path(), &["--max_steps", "3", "--logging_steps", "1"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let losses = log_history(dir.path()).iter().filter(|e| e.get("loss").is_some()).count();
    assert_eq!(losses, 3);
}

#[test]
fn print_config_round_trips() {
    let dir = tempdir();
    let run = host(
        dir.path(),
        &["--print-config", "--learning-rate", "0.01", "--plugin-config", "weighted_ce.label_smoothing=0.1"],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stdout.contains("learning_rate = 0.01"), "{}", run.stdout);
    std::fs::write(dir.path().join("printed.toml"), &run.stdout).unwrap();
    let again = host(dir.path(), &["--print-config", "--config", "printed.toml"]);
    assert_eq!(again.code, 0, "stderr:\n{}", again.stderr);
    assert_eq!(again.stdout, run.stdout);
}

#[test]
fn help_explains_every_training_argument() {
    let dir = tempdir();
    let run = host(dir.path(), &["--help"]);
    assert_eq!(run.code, 0);
    for name in host::config::arguments::ARGUMENT_NAMES {
        let flag = format!("--{}", name.replace('_', "-"));
        assert!(run.stdout.contains(&flag), "--help lacks {flag}");
    }
    for text in [
        "--plugin <PATH|NAME>",
        "--loss <NAME>",
        "--callback <NAME>",
        "--plugin-config",
        "--config <FILE>",
        "[default: 0.002]",
    ] {
        assert!(run.stdout.contains(text), "--help lacks {text}:\n{}", run.stdout);
    }
}

#[test]
fn nan_losses_are_filtered_from_the_logged_average_as_hf() {
    let fixtures = plugin("test_fixtures");
    let logged = |filter: &str| -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let dir = tempdir();
        let args = [
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
            "3",
            "--logging-steps",
            "3",
            "--eval-strategy",
            "no",
            "--logging-nan-inf-filter",
            filter,
        ];
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        let history = log_history(dir.path());
        let losses = history.iter().filter_map(|e| e.get("loss").cloned()).collect();
        let reference = host(dir.path(), &["--max-steps", "2", "--logging-steps", "1", "--eval-strategy", "no"]);
        assert_eq!(reference.code, 0);
        let first_two = log_history(dir.path()).iter().filter_map(|e| e.get("loss").cloned()).collect();
        (losses, first_two)
    };
    let (filtered, first_two) = logged("true");
    let (l1, l2) = (first_two[0].as_f64().unwrap(), first_two[1].as_f64().unwrap());
    // HF: the nan step counts as (l1 + l2) / (1 + global_step - last_logged) = (l1 + l2) / 3.
    let expected = (l1 + l2 + (l1 + l2) / 3.0) / 3.0;
    assert!((filtered[0].as_f64().unwrap() - expected).abs() < 1e-6, "{filtered:?} vs {expected}");
    let (unfiltered, _) = logged("false");
    assert_eq!(unfiltered[0], serde_json::json!("NaN"));
}

#[test]
fn the_same_config_twice_gives_bitwise_the_same_run() {
    let run_once = || {
        let dir = tempdir();
        let args = [
            "--max-steps",
            "40",
            "--logging-steps",
            "5",
            "--eval-steps",
            "20",
            "--eval-strategy",
            "steps",
            "--data-seed",
            "7",
        ];
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        let losses: Vec<u64> = log_history(dir.path())
            .iter()
            .filter_map(|e| e.get("loss").or(e.get("eval_loss")).and_then(|v| v.as_f64()))
            .map(f64::to_bits)
            .collect();
        let weights = std::fs::read(dir.path().join("output/model.safetensors")).unwrap();
        (losses, weights)
    };
    let (losses_a, weights_a) = run_once();
    let (losses_b, weights_b) = run_once();
    assert_eq!(losses_a.len(), 10);
    assert_eq!(losses_a, losses_b);
    assert!(weights_a == weights_b, "model.safetensors differs between two identical runs");
}

#[test]
fn final_weights_load_in_python_and_init_weights_errors_are_clear() {
    let dir = tempdir();
    let run = host(dir.path(), &["--max-steps", "3", "--eval-strategy", "no"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let check = std::process::Command::new(repo().join(".venv/bin/python"))
        .args(["-c", "import sys; from safetensors.torch import load_file; d = load_file(sys.argv[1]); print(sorted((k, tuple(v.shape)) for k, v in d.items()))"])
        .arg(dir.path().join("output/model.safetensors"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "[('layers.0.bias', (256,)), ('layers.0.weight', (256, 64)), ('layers.2.bias', (256,)), ('layers.2.weight', (256, 256)), ('layers.4.bias', (10,)), ('layers.4.weight', (10, 256))]"
    );
    // The saved weights start a new run; a file of another shape is refused, naming what is off.
    let saved = dir.path().join("output/model.safetensors");
    let again = tempdir();
    let run = host(again.path(), &["--init-weights", path_str(&saved), "--max-steps", "1", "--eval-strategy", "no"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let other = tempdir();
    std::fs::write(other.path().join("w.safetensors"), b"not safetensors").unwrap();
    host(other.path(), &["--init-weights", "w.safetensors"])
        .assert_clean_error(2, "init_weights: w.safetensors is not a readable safetensors file");
    host(other.path(), &["--init-weights", "none.safetensors"])
        .assert_clean_error(2, "init_weights: none.safetensors does not exist");
    let wrong = tch::Tensor::zeros([3, 64], (tch::Kind::Float, tch::Device::Cpu));
    let extra = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(
        &[("layers.0.weight", &wrong), ("head.bias", &extra)],
        other.path().join("bad.safetensors"),
    )
    .unwrap();
    host(other.path(), &["--init-weights", "bad.safetensors"]).assert_clean_error(
        2,
        "init_weights: bad.safetensors does not fit the model (missing: layers.0.bias, layers.2.bias, layers.2.weight, layers.4.bias, layers.4.weight; unexpected: head.bias; wrong shape: layers.0.weight is [3, 64], the model has [256, 64])",
    );
}

#[test]
fn bf16_autocast_trains_on_cpu_and_fp16_needs_cuda() {
    let losses = |extra: &[&str]| -> Vec<f64> {
        let dir = tempdir();
        let mut args = vec!["--max-steps", "20", "--logging-steps", "5", "--eval-strategy", "no", "--device", "cpu"];
        args.extend_from_slice(extra);
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        log_history(dir.path()).iter().filter_map(|e| e.get("loss").and_then(|v| v.as_f64())).collect()
    };
    let full = losses(&[]);
    let bf16 = losses(&["--bf16"]);
    // Autocast really is on (bf16 rounding changes the numbers), and training still works.
    assert_ne!(full, bf16);
    for (f, b) in full.iter().zip(&bf16) {
        assert!((f - b).abs() < 0.05 * f, "fp32 {f} vs bf16 {b}");
    }
    assert!(bf16.last().unwrap() < &bf16[0]);
    let dir = tempdir();
    host(dir.path(), &["--fp16", "--device", "cpu"]).assert_clean_error(2, "fp16 mixed precision needs a CUDA device");
    host(dir.path(), &["--fp16", "--bf16"]).assert_clean_error(2, "bf16 and fp16 are both set; choose one");
}

#[test]
fn memory_metrics_report_what_each_stage_kept_as_hf_does() {
    let dir = tempdir();
    // 64-2048-2048-10: 4.35M float32 parameters, 17.4 MB each for the weights, their
    // gradients and AdamW's two moments.
    let args = ["--max-steps", "4", "--hidden-size", "2048", "--save-strategy", "no", "--do-eval"];
    let run = host(dir.path(), &[&args[..], &["--skip-memory-metrics", "false"]].concat());
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let first = results(dir.path());
    let mb = |name: &str| first[name].as_f64().unwrap_or_else(|| panic!("no {name} in {first}")) / 1e6;
    assert!(mb("init_mem_cpu_alloc_delta") >= 17.0, "the weights are made at init: {first}");
    let kept = mb("init_mem_cpu_alloc_delta") + mb("train_mem_cpu_alloc_delta");
    assert!((4.0 * 17.0..400.0).contains(&kept), "weights, gradients and moments: {kept} MB in {first}");
    assert!((50.0..4000.0).contains(&mb("before_init_mem_cpu")), "{first}");
    for name in ["init_mem_cpu_peaked_delta", "train_mem_cpu_peaked_delta", "eval_mem_cpu_alloc_delta"] {
        assert!(first[name].as_f64().is_some(), "no {name} in {first}");
    }
    assert!(!first.to_string().contains("_mem_gpu_"), "no accelerator, no GPU figures: {first}");
    // The train log line carries them; the summary shows whole MB, as HF's log_metrics.
    let last = log_history(dir.path()).into_iter().rfind(|e| e.get("train_runtime").is_some()).unwrap();
    assert!(last.get("train_mem_cpu_alloc_delta").is_some(), "{last}");
    let shown =
        format!("init_mem_cpu_alloc_delta   = {}MB", first["init_mem_cpu_alloc_delta"].as_f64().unwrap() as i64 >> 20);
    assert!(run.stdout.contains(&shown), "{shown} in:\n{}", run.stdout);
    // Skipped by default, as in HF.
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(!results(dir.path()).to_string().contains("_mem_"), "{}", results(dir.path()));
}

#[test]
fn nothing_evaluated_means_no_validation_split() {
    // The digits: 1797 examples, batch 64. Evaluated, 20% is split off (23 steps an
    // epoch); with nothing evaluated every example trains (29 steps), and the log says so.
    let dir = tempdir();
    let steps = |run: &Run| -> i64 {
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("output/trainer_state.json")).unwrap())
                .unwrap();
        state["global_step"].as_i64().unwrap()
    };
    let args = ["--num-train-epochs", "1", "--save-strategy", "no", "--output-dir", "output"];
    let run = host(dir.path(), &[&args[..], &["--eval-strategy", "no"]].concat());
    assert_eq!(steps(&run), 29);
    assert!(run.stderr.contains("no validation split: nothing is evaluated"), "{}", run.stderr);
    assert!(!results(dir.path()).to_string().contains("eval_"), "nothing evaluated");
    let run = host(dir.path(), &[&args[..], &["--eval-strategy", "epoch"]].concat());
    assert_eq!(steps(&run), 23);
    assert!(!run.stderr.contains("no validation split"), "{}", run.stderr);
}
