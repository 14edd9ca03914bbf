//! ABI evolution: plugins compiled against older plugin-api versions (1.0.0 and 1.5.0,
//! frozen in tests/compat) still load into this host and work, although the API has grown
//! since (1.1.0 added callback state hooks to the callback vtable; 1.6.0 component kinds).

use std::process::Command;

use crate::support::*;

/// Builds the plugin crate tests/compat/`name` (a workspace of its own, against a frozen
/// plugin-api) into the test build's target folder; returns its library.
fn build_compat_plugin(name: &str) -> std::path::PathBuf {
    let manifest = repo().join(format!("tests/compat/{name}/Cargo.toml"));
    let target = target_profile_dir().parent().unwrap().to_owned();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "building tests/compat/{name} against its frozen plugin-api failed");
    target.join(format!("debug/lib{name}.so"))
}

#[test]
fn plugin_built_against_plugin_api_1_0_still_works() {
    let old = build_compat_plugin("old_recorder");

    // It really was built against the old version.
    let lib = host::plugins::Plugin::load(&old).unwrap();
    assert_eq!(lib.api_version(), "1.0.0");
    assert_ne!(plugin_api::API_VERSION, "1.0.0");

    // Run it next to a current plugin's callback, which has state (a 1.1 feature).
    let dir = tempdir();
    let old_log = dir.path().join("old.txt");
    let new_log = dir.path().join("new.txt");
    let fixtures = plugin("test_fixtures");
    let old_config = format!("old_recorder.path={}", old_log.display());
    let new_config = format!("recorder.path={}", new_log.display());
    let run = host(
        dir.path(),
        &[
            "--plugin",
            path_str(&old),
            "--plugin",
            path_str(&fixtures),
            "--loss",
            "builtin",
            "--callback",
            "old_recorder",
            "--callback",
            "recorder",
            "--plugin-config",
            &old_config,
            "--plugin-config",
            &new_config,
            "--plugin-config",
            "recorder.with_step=true",
            "--max-steps",
            "5",
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "5",
        ],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);

    let old_events = std::fs::read_to_string(&old_log).unwrap();
    assert_eq!(
        old_events.lines().collect::<Vec<_>>(),
        [
            "on_train_begin 0",
            "on_step_end 1",
            "on_step_end 2",
            "on_step_end 3",
            "on_step_end 4",
            "on_step_end 5",
            "on_evaluate 5 eval_accuracy=true",
            "on_train_end 5",
        ]
    );

    // The state hook is used where the plugin has it, and skipped for the 1.0 plugin.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("output/trainer_state.json")).unwrap()).unwrap();
    let callbacks = state["stateful_callbacks"].as_object().unwrap();
    let recorded = std::fs::read_to_string(&new_log).unwrap().lines().count() as u64;
    assert_eq!(callbacks["recorder"]["attributes"]["events_seen"].as_u64(), Some(recorded));
    assert!(!callbacks.contains_key("old_recorder"));
    assert_eq!(state["global_step"], 5);
}

/// A plugin built against plugin-api 1.5.0 (frozen in tests/compat), the last version
/// before the 1.6 component kinds: everything 1.1-1.5 added still works in today's host,
/// next to 1.6 components.
#[test]
fn plugin_built_against_plugin_api_1_5_still_works_next_to_the_new_kinds() {
    let recent = build_compat_plugin("recent_plugin");
    assert_eq!(host::plugins::Plugin::load(&recent).unwrap().api_version(), "1.5.0");

    let dir = tempdir();
    let inspect = host(dir.path(), &["plugins", "inspect", path_str(&recent)]);
    assert!(
        inspect.stdout.contains("plugin-api 1.5.0") && inspect.stdout.contains("scale  number, default 1"),
        "{}",
        inspect.stdout
    );
    let (report, muon) = (plugin("classification_report"), plugin("muon"));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--plugin",
            path_str(&recent),
            "--plugin",
            path_str(&report),
            "--plugin",
            path_str(&muon),
            "--optim",
            "plugin:muon",
            "--plugin-config",
            "recent.scale=10",
            "--max-steps",
            "6",
            "--logging-steps",
            "2",
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "3",
            "--save-steps",
            "3",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    let run = host(dir.path(), &args(&[]).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Its extra log entry counts the steps whose parameters it saw (1.2, 1.3).
    let logged: Vec<(i64, f64)> = log_history(dir.path())
        .iter()
        .filter(|e| e.get("loss").is_some())
        .map(|e| (e["step"].as_i64().unwrap(), e["recent_steps"].as_f64().unwrap()))
        .collect();
    assert_eq!(logged, [(2, 20.0), (4, 40.0), (6, 60.0)]);
    assert!(log_history(dir.path()).iter().any(|e| e.get("eval_macro_f1").is_some()), "the 1.6 metric ran too");
    // Its JSON state and its tensor state are in the checkpoint (1.1, 1.3)...
    let checkpoint = dir.path().join("output/checkpoint-3");
    let tensors = tch::Tensor::read_safetensors(checkpoint.join("callback_tensors.safetensors")).unwrap();
    assert_eq!(tensors.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["recent.total"]);
    // ... and come back on resume: it counts on from 3, not from 0.
    let resumed = host(
        dir.path(),
        &args(&["--resume-from-checkpoint", "output/checkpoint-3", "--output-dir", "again"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("again/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["stateful_callbacks"]["recent"]["attributes"]["steps"], 6);
}
