//! Bad input: one line naming the problem, exit code 2, never a crash. Plugin failures at
//! run time: one line naming plugin, component and event, a non-zero exit, no abort.

use crate::support::*;

#[test]
fn missing_plugin_file() {
    let dir = tempdir();
    host(dir.path(), &["--plugin", "no/such/libplugin.so"])
        .assert_clean_error(2, "plugin file no/such/libplugin.so does not exist");
}

#[test]
fn file_that_is_not_a_shared_library() {
    let dir = tempdir();
    std::fs::write(dir.path().join("notes.so"), "just text").unwrap();
    host(dir.path(), &["--plugin", "notes.so"])
        .assert_clean_error(2, "cannot load plugin notes.so: not a loadable shared library");
}

#[test]
fn shared_library_without_root_module() {
    let dir = tempdir();
    let lib = plugin("no_root_module");
    host(dir.path(), &["--plugin", path_str(&lib)]).assert_clean_error(2, "is a shared library but not a host plugin");
}

#[test]
fn plugin_built_against_another_plugin_api_major() {
    let dir = tempdir();
    let lib = plugin("future_api");
    let run = host(dir.path(), &["--plugin", path_str(&lib)]);
    run.assert_clean_error(2, "was built against plugin-api 2.0.0, this host expects plugin-api 1.x");
    assert!(run.error_line().contains("libfuture_api.so"), "names the file: {}", run.error_line());
}

#[test]
fn plugin_built_against_another_torch() {
    let dir = tempdir();
    let lib = plugin("torch_mismatch");
    let run = host(dir.path(), &["--plugin", path_str(&lib)]);
    run.assert_clean_error(2, "was built against torch 1.13.1+cpu, this host uses torch 2.11.0");
    assert!(run.error_line().contains("libtorch_mismatch.so"));
}

#[test]
fn component_the_plugin_does_not_provide() {
    let dir = tempdir();
    let lib = plugin("weighted_ce");
    host(dir.path(), &["--plugin", path_str(&lib), "--loss", "focal"])
        .assert_clean_error(2, "no loaded plugin provides a loss named 'focal' (available: weighted_ce)");
    host(dir.path(), &["--plugin", path_str(&lib), "--callback", "early_stopping"])
        .assert_clean_error(2, "no loaded plugin provides a callback named 'early_stopping' (available: none)");
}

#[test]
fn plugin_config_of_wrong_type() {
    let dir = tempdir();
    let lib = plugin("weighted_ce");
    host(dir.path(), &["--plugin", path_str(&lib), "--plugin-config", "weighted_ce.label_smoothing=\"high\""])
        .assert_clean_error(2, "plugin 'weighted_ce' loss 'weighted_ce': bad config: label_smoothing: invalid type: string \"high\", expected f64");
}

#[test]
fn plugin_config_with_unknown_key() {
    let dir = tempdir();
    let lib = plugin("weighted_ce");
    host(dir.path(), &["--plugin", path_str(&lib), "--plugin-config", "weighted_ce.wieghts=[1,2,3]"])
        .assert_clean_error(
            2,
            "bad config: unknown field `wieghts`, expected one of `weights`, `label_smoothing`, `ignore_index`",
        );
}

#[test]
fn plugin_config_from_toml_file_with_bad_value() {
    let dir = tempdir();
    let lib = plugin("weighted_ce");
    std::fs::write(dir.path().join("run.toml"), "[plugin_config.weighted_ce]\nlabel_smoothing = 1.5\n").unwrap();
    host(dir.path(), &["--plugin", path_str(&lib), "--config", "run.toml"])
        .assert_clean_error(2, "bad config: label_smoothing must be in [0, 1) (got 1.5)");
}

#[test]
fn plugin_config_mismatched_with_model_is_a_config_error() {
    let dir = tempdir();
    let lib = plugin("weighted_ce");
    host(dir.path(), &["--plugin", path_str(&lib), "--plugin-config", "weighted_ce.weights=[1,2,3]"])
        .assert_clean_error(2, "weights has 3 entries but the model has 10 classes");
}

#[test]
fn config_for_a_component_not_in_use() {
    let dir = tempdir();
    host(dir.path(), &["--plugin-config", "weighted_ce.weights=[1]"])
        .assert_clean_error(2, "plugin_config for 'weighted_ce', but no component of that name is in use");
}

#[test]
fn unknown_training_key_and_bad_values() {
    let dir = tempdir();
    std::fs::write(dir.path().join("run.toml"), "lerning_rate = 0.1\n").unwrap();
    host(dir.path(), &["--config", "run.toml"])
        .assert_clean_error(2, "unknown key 'lerning_rate' (did you mean 'learning_rate'?)");
    std::fs::write(dir.path().join("bad.toml"), "learning_rate = [\n").unwrap();
    host(dir.path(), &["--config", "bad.toml"]).assert_clean_error(2, "config file bad.toml (line 1)");
    host(dir.path(), &["--per-device-train-batch-size", "0"])
        .assert_clean_error(2, "per_device_train_batch_size must be at least 1 (got 0)");
    host(dir.path(), &["--device", "tpu"]).assert_clean_error(2, "device 'tpu' is not one of: auto, cpu, cuda, cuda:N");
    host(dir.path(), &["--config", "missing.toml"]).assert_clean_error(2, "cannot read config file missing.toml");
    // Negative numbers are values, so the argument's own check speaks; NaN is refused too.
    host(dir.path(), &["--save-steps", "-1"]).assert_clean_error(2, "save_steps must be > 0 (got -1)");
    host(dir.path(), &["train", "--warmup-steps", "-5"]).assert_clean_error(2, "warmup_steps must be >= 0 (got -5)");
    host(dir.path(), &["--weight-decay", "nan"]).assert_clean_error(2, "weight_decay must be >= 0 (got NaN)");
    let run = host(dir.path(), &["--max-steps", "-1", "--print-config"]);
    assert_eq!(run.code, 0, "HF's own default for max_steps is -1:\n{}", run.stderr);
    assert!(run.stdout.contains("max_steps = -1"), "{}", run.stdout);
    let run = host(dir.path(), &["--no-such-flag"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("unexpected argument '--no-such-flag'"), "{}", run.stderr);
    // A near miss gets clap's suggestion; a far one no misleading hint, but where a
    // plugin's settings go.
    let run = host(dir.path(), &["--lerning-rate", "0.1"]);
    assert!(run.stderr.contains("a similar argument exists: '--learning-rate'"), "{}", run.stderr);
    host(dir.path(), &["--using-ema", "true"]).assert_clean_error(
        2,
        "unexpected argument '--using-ema': no training argument of the host is named so (`host --help` lists them); a plugin's settings go in --plugin-config NAME.KEY=VALUE",
    );
}

#[test]
fn several_losses_need_a_choice() {
    let dir = tempdir();
    let lib = plugin("test_fixtures");
    host(dir.path(), &["--plugin", path_str(&lib)]).assert_clean_error(2, "the loaded plugins provide several losses");
}

#[test]
fn same_component_name_from_two_plugins() {
    let dir = tempdir();
    let lib = plugin("weighted_ce");
    let copy = dir.path().join("libweighted_ce_copy.so");
    std::fs::copy(&lib, &copy).unwrap();
    host(dir.path(), &["--plugin", path_str(&lib), "--plugin", path_str(&copy)])
        .assert_clean_error(2, "component name 'weighted_ce' is provided by both");
}

#[test]
fn panic_in_compute_loss_is_reported_not_aborted() {
    let dir = tempdir();
    let lib = plugin("test_fixtures");
    let record = format!("recorder.path={}", dir.path().join("events.txt").display());
    let run = host(
        dir.path(),
        &["--plugin", path_str(&lib), "--loss", "panic_loss", "--callback", "recorder", "--plugin-config", &record],
    );
    run.assert_clean_error(
        1,
        "plugin 'test_fixtures' loss 'panic_loss' panicked in compute_loss: deliberate panic in compute_loss",
    );
}

#[test]
fn panic_in_a_callback_event_is_reported_not_aborted() {
    let dir = tempdir();
    let lib = plugin("test_fixtures");
    let run = host(
        dir.path(),
        &["--plugin", path_str(&lib), "--loss", "builtin", "--callback", "misbehave", "--logging-steps", "5"],
    );
    run.assert_clean_error(
        1,
        "plugin 'test_fixtures' callback 'misbehave' panicked in on_epoch_end: deliberate panic in on_epoch_end",
    );
    // Training ran up to the failing event (the end of the first epoch, step 23), and
    // what was logged is kept.
    let steps: Vec<i64> = log_history(dir.path()).iter().map(|e| e["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [5, 10, 15, 20]);
}

#[test]
fn error_returned_by_a_callback_stops_training() {
    let dir = tempdir();
    let lib = plugin("test_fixtures");
    let run = host(
        dir.path(),
        &[
            "--plugin",
            path_str(&lib),
            "--loss",
            "builtin",
            "--callback",
            "misbehave",
            "--plugin-config",
            "misbehave.fail=true",
            "--plugin-config",
            "misbehave.event=on_step_end",
        ],
    );
    run.assert_clean_error(
        1,
        "plugin 'test_fixtures' callback 'misbehave' failed in on_step_end: refusing to continue in on_step_end",
    );
}

#[test]
fn panic_in_a_constructor_and_non_scalar_loss() {
    let dir = tempdir();
    let lib = plugin("test_fixtures");
    let record = format!("recorder.path={}", dir.path().join("events.txt").display());
    let base = ["--plugin", path_str(&lib), "--callback", "recorder", "--plugin-config", &record];
    let mut args = base.to_vec();
    args.extend(["--loss", "panic_on_create"]);
    host(dir.path(), &args).assert_clean_error(
        1,
        "loss 'panic_on_create' panicked in its constructor: deliberate panic while creating the loss",
    );
    let mut args = base.to_vec();
    args.extend(["--loss", "vector_loss"]);
    host(dir.path(), &args)
        .assert_clean_error(1, "loss 'vector_loss' returned a tensor of shape [64]; compute_loss must return a scalar");
}

#[test]
fn a_model_too_large_for_memory_is_named_not_a_crash() {
    let dir = tempdir();
    // A 64-1000000-1000000-10 MLP: 4 TB of weights, which no allocator grants.
    let run = host(dir.path(), &["--hidden-size", "1000000", "--max-steps", "1"]);
    run.assert_clean_error(
        1,
        "out of memory allocating 4.0 TB for the model (hidden_size 1000000, num_hidden_layers 2): use a smaller model or batch",
    );
    assert!(!dir.path().join("output/checkpoint-1").exists());
}
