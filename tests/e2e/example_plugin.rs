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
