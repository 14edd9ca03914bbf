//! ABI evolution: a plugin compiled against an older plugin-api (1.0.0, frozen in
//! tests/compat) still loads into this host and works, although the API has grown since
//! (1.1.0 added callback state hooks to the callback vtable).

use std::process::Command;

use crate::support::*;

#[test]
fn plugin_built_against_plugin_api_1_0_still_works() {
    let manifest = repo().join("tests/compat/old_recorder/Cargo.toml");
    let target = target_profile_dir().parent().unwrap().to_owned();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "building the plugin against plugin-api 1.0.0 failed");
    let old = target.join("debug/libold_recorder.so");

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
