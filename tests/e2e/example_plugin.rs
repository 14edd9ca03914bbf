//! A user's own plugin crate (examples/), built out of the tree against plugin-api alone,
//! loads into the already-built host.

use std::process::Command;

use crate::support::*;

#[test]
fn example_crate_builds_alone_and_trains() {
    let manifest = repo().join("examples/class_weighted_loss/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let deps = text.split("[dependencies]").nth(1).unwrap();
    let names: Vec<&str> = deps
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split('=').next().unwrap().trim())
        .collect();
    assert_eq!(names, ["plugin-api"], "the example depends on plugin-api alone");
    let source = std::fs::read_to_string(repo().join("examples/class_weighted_loss/src/lib.rs")).unwrap();
    assert!(!source.contains("unsafe"), "plugin code needs no unsafe");

    // Shares the workspace's target folder only to reuse compiled dependencies.
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_profile_dir().parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let lib = target_profile_dir().parent().unwrap().join("debug/libclass_weighted_loss.so");

    let dir = tempdir();
    let run =
        host(dir.path(), &["--plugin", path_str(&lib), "--plugin-config", "class_weighted.class_weights=[1,2,3]"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("loss: class_weighted (plugin class_weighted_loss)"));
    let history = log_history(dir.path());
    let losses: Vec<f64> = history.iter().filter_map(|e| e.get("loss").and_then(|v| v.as_f64())).collect();
    assert!(losses.last().unwrap() < &(losses[0] / 3.0), "the loss falls: {losses:?}");
    assert!(results(dir.path())["eval_accuracy"].as_f64().unwrap() >= 0.95);
}

/// `host new-plugin`: the crate builds out of the tree, its unit test passes, and the host
/// trains with it.
#[test]
fn new_plugin_scaffolds_build_test_and_load() {
    let dir = tempdir();
    let target = target_profile_dir().parent().unwrap().to_owned();
    let kinds = [
        ("scaled_ce", "loss"),
        ("eval_counter", "callback"),
        ("hits", "metric"),
        ("heavy_ball", "optimizer"),
        ("step_decay", "scheduler"),
        ("jitter", "batch-transform"),
        ("two_layer", "model"),
    ];
    for (name, kind) in kinds {
        let run = host(dir.path(), &["new-plugin", name, "--kind", kind]);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        let root = dir.path().join(name);
        for file in ["Cargo.toml", "build.rs", "README.md", "src/lib.rs", ".cargo/config.toml"] {
            assert!(root.join(file).is_file(), "{name}: {file} missing");
        }
        assert!(!std::fs::read_to_string(root.join("src/lib.rs")).unwrap().contains("unsafe"));
        // Outside the repository: the crate's own .cargo/config.toml points at libtorch.
        let cargo = |args: &[&str]| {
            Command::new(env!("CARGO"))
                .args(args)
                .current_dir(&root)
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("LIBTORCH")
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
        };
        assert!(cargo(&["test", "--quiet"]).success(), "{name}: cargo test failed");
        assert!(cargo(&["build", "--quiet"]).success(), "{name}: cargo build failed");
        let lib = target.join(format!("debug/lib{name}.so"));
        let mut args = vec!["--plugin", path_str(&lib), "--max-steps", "20", "--logging-steps", "10"];
        // What makes the run use the component, and what shows that it did.
        let (extra, shows): (&[&str], &str) = match kind {
            "callback" => (
                &["--plugin-config", "eval_counter.stop_at_step=12", "--eval-strategy", "steps", "--eval-steps", "5"],
                "",
            ),
            "metric" => (&["--eval-strategy", "steps", "--eval-steps", "20"], "eval_hits_accuracy"),
            "optimizer" => (
                &["--optim", "plugin:heavy_ball", "--learning-rate", "0.05", "--weight-decay", "0"],
                "optimizer: heavy_ball",
            ),
            "scheduler" => (&["--lr-scheduler-type", "plugin:step_decay"], "lr schedule: step_decay"),
            "batch-transform" => (&[], "batch transform: jitter"),
            "model" => (&["--model", "plugin:two_layer", "--learning-rate", "0.01"], "model: two_layer (plugin)"),
            _ => (&[], ""),
        };
        args.extend_from_slice(extra);
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "{name}: stderr:\n{}", run.stderr);
        assert!(run.stderr.contains(shows), "{name}: {shows:?} not in\n{}", run.stderr);
        let last_step = log_history(dir.path()).last().unwrap()["step"].as_i64().unwrap();
        assert_eq!(last_step, if kind == "callback" { 12 } else { 20 });
        if kind == "optimizer" {
            // The template's SGD with momentum is PyTorch's: the built-in sgd trains to the
            // same weights, byte for byte.
            let builtin = ["--optim", "sgd", "--optim-args", "momentum=0.9", "--output-dir", "builtin_sgd"];
            let common =
                ["--max-steps", "20", "--logging-steps", "10", "--learning-rate", "0.05", "--weight-decay", "0"];
            let run = host(dir.path(), &[&common[..], &builtin].concat());
            assert_eq!(run.code, 0, "{}", run.stderr);
            let weights = |folder: &str| std::fs::read(dir.path().join(folder).join("model.safetensors")).unwrap();
            assert!(weights("output") == weights("builtin_sgd"), "heavy_ball and the built-in sgd differ");
        }
        if kind == "scheduler" {
            // Decay by 0.1 every 6 of the 20 steps: step 10 uses decay 1, step 20 decay 3.
            let rates: Vec<f64> = log_history(dir.path()).iter().filter_map(|e| e["learning_rate"].as_f64()).collect();
            assert_eq!(rates.len(), 2, "{rates:?}");
            assert!((rates[0] / rates[1] - 100.0).abs() < 1e-6, "{rates:?}");
        }
    }

    host(dir.path(), &["new-plugin", "scaled_ce", "--kind", "loss"]).assert_clean_error(2, "already exists");
    host(dir.path(), &["new-plugin", "Bad-Name", "--kind", "loss"])
        .assert_clean_error(2, "plugin name 'Bad-Name' must be lowercase");
}

#[test]
fn plugin_command_line_slips_get_plain_answers() {
    let dir = tempdir();
    // A folder where a library belongs is named as a folder, not as missing.
    host(dir.path(), &["--plugin", path_str(&repo().join("plugins/weighted_ce")), "--max-steps", "1"])
        .assert_clean_error(2, "is a folder, not a plugin library");
    // `builtin` is the host's own loss name.
    host(dir.path(), &["new-plugin", "builtin", "--kind", "loss"])
        .assert_clean_error(2, "plugin name 'builtin' is the host's own loss");
    // New crates share one build folder.
    let run = host(dir.path(), &["new-plugin", "shared_one", "--kind", "callback"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let config = std::fs::read_to_string(dir.path().join("shared_one/.cargo/config.toml")).unwrap();
    let shared = repo().join("target/plugin-crates");
    assert!(config.contains(&format!("target-dir = \"{}\"", shared.display())), "{config}");
    assert!(run.stdout.contains(&format!("{}/release/libshared_one.so", shared.display())), "{}", run.stdout);
    // Output into a closed pipe ends the command quietly, as Unix tools do. (`true` exits
    // without reading, long before the host has started: every write finds the pipe closed.)
    let library = plugin("weighted_ce");
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' plugins inspect '{}' | true", env!("CARGO_BIN_EXE_host"), library.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&piped.stderr), "", "nothing about a broken pipe");
}
