//! Checkpoints: exact resume, layout, rotation, corruption, crashes and signals.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("output/model.safetensors")).unwrap()
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("output"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    names.sort_by_key(|n| n["checkpoint-".len()..].parse::<i64>().unwrap());
    names
}

fn assert_same_run(straight: &Path, resumed: &Path) {
    assert_eq!(history_without_timings(straight), history_without_timings(resumed));
    assert!(weights(straight) == weights(resumed), "final weights differ");
}

#[test]
fn resume_after_an_epoch_equals_the_run_that_never_stopped() {
    let base = ["--num-train-epochs", "2", "--save-strategy", "epoch", "--logging-steps", "5"];
    let straight = tempdir();
    assert_eq!(run_with_recorder(straight.path(), &base, &[]).code, 0);
    let resumed = tempdir();
    assert_eq!(run_with_recorder(resumed.path(), &base, &["--plugin-config", "recorder.stop_at_step=23"]).code, 0);
    assert_eq!(checkpoints(resumed.path()), ["checkpoint-23"]);
    let run = run_with_recorder(resumed.path(), &base, &["--resume-from-checkpoint", "latest"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("resumed from output/checkpoint-23 at step 23 (epoch 1, 0 micro-batches into it)"));
    assert_same_run(straight.path(), resumed.path());
    // The callback's state came back: it counts on from where the checkpoint left it.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(resumed.path().join("output/checkpoint-46/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert!(state["stateful_callbacks"]["recorder"]["attributes"]["events_seen"].as_u64().unwrap() > 100);
    // The resumed call's speed counts its own 23 steps and their samples, as HF's does
    // (the step rate once counted all 46): the epoch's 1438 examples in 23 steps.
    let results = results(resumed.path());
    let per_step =
        results["train_samples_per_second"].as_f64().unwrap() / results["train_steps_per_second"].as_f64().unwrap();
    assert!((per_step - 1438.0 / 23.0).abs() < 0.05, "{per_step} samples a step: {results}");
}

#[test]
fn resume_mid_epoch_with_accumulation_and_a_plugin_loss_is_exact() {
    let weighted = plugin("weighted_ce");
    let base = [
        "--plugin",
        path_str(&weighted),
        "--loss",
        "weighted_ce",
        "--plugin-config",
        "weighted_ce.weights=[1,2,1,1,1,1,1,1,1,3]",
        "--max-steps",
        "20",
        "--gradient-accumulation-steps",
        "2",
        "--per-device-train-batch-size",
        "32",
        "--save-strategy",
        "steps",
        "--save-steps",
        "7",
        "--logging-steps",
        "3",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "9",
    ];
    let straight = tempdir();
    assert_eq!(run_with_recorder(straight.path(), &base, &[]).code, 0);
    let resumed = tempdir();
    assert_eq!(run_with_recorder(resumed.path(), &base, &["--plugin-config", "recorder.stop_at_step=10"]).code, 0);
    // Saved at step 7 only (save_steps multiples, and the end when it is reached).
    assert_eq!(checkpoints(resumed.path()), ["checkpoint-7"]);
    let run = run_with_recorder(
        resumed.path(),
        &base,
        &["--resume-from-checkpoint", resumed.path().join("output/checkpoint-7").to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("at step 7 (epoch 0, 14 micro-batches into it)"), "{}", run.stderr);
    assert_same_run(straight.path(), resumed.path());
}

#[test]
fn checkpoint_layout_is_hf_compatible_and_pickle_free() {
    let dir = tempdir();
    let run = host(dir.path(), &["--max-steps", "4", "--save-steps", "2", "--eval-strategy", "no"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert_eq!(checkpoints(dir.path()), ["checkpoint-2", "checkpoint-4"]);
    let ckpt = dir.path().join("output/checkpoint-4");
    let mut files: Vec<String> =
        std::fs::read_dir(&ckpt).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(
        files,
        [
            "host_state.json",
            "manifest.json",
            "model.safetensors",
            "optimizer.json",
            "optimizer.safetensors",
            "rng_state.safetensors",
            "scheduler.json",
            "trainer_state.json",
            "training_args.json",
        ]
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["sha256"].as_object().unwrap().len(), files.len() - 1, "every other file has a checksum");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    for key in [
        "global_step",
        "epoch",
        "max_steps",
        "log_history",
        "best_metric",
        "best_global_step",
        "best_model_checkpoint",
        "logging_steps",
        "eval_steps",
        "save_steps",
        "train_batch_size",
        "num_train_epochs",
        "stateful_callbacks",
    ] {
        assert!(state.get(key).is_some(), "trainer_state.json lacks {key}");
    }
    assert_eq!(state["global_step"], 4);
    assert_eq!(state["save_steps"], 2);
    // Python reads the weights and the optimizer state as they are.
    let check = Command::new(repo().join(".venv/bin/python"))
        .args(["-c", "import sys; from safetensors.torch import load_file; m = load_file(sys.argv[1] + '/model.safetensors'); o = load_file(sys.argv[1] + '/optimizer.safetensors'); print(len(m), sorted(o)[0])"])
        .arg(&ckpt)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "6 layers.0.bias.exp_avg",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn rotation_keeps_the_newest_and_the_best() {
    let dir = tempdir();
    let args = ["--max-steps", "10", "--save-steps", "2", "--save-total-limit", "2", "--eval-strategy", "no"];
    assert_eq!(host(dir.path(), &args).code, 0);
    assert_eq!(checkpoints(dir.path()), ["checkpoint-8", "checkpoint-10"]);

    // The best checkpoint is the first (the highest eval_loss counts as best here), and it
    // is kept with save_total_limit=1, next to the newest, as HF does.
    let dir = tempdir();
    let args = [
        "--max-steps",
        "8",
        "--save-steps",
        "2",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "2",
        "--save-total-limit",
        "1",
        "--metric-for-best-model",
        "loss",
        "--greater-is-better",
        "true",
        "--load-best-model-at-end",
    ];
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert_eq!(checkpoints(dir.path()), ["checkpoint-2", "checkpoint-8"]);
    assert!(run.stderr.contains("loading the best model from output/checkpoint-2"), "{}", run.stderr);
    let best = std::fs::read(dir.path().join("output/checkpoint-2/model.safetensors")).unwrap();
    assert!(weights(dir.path()) == best, "load_best_model_at_end left the best weights");
    // The results report the evaluation of those weights (step 2's), not the last one.
    let history = log_history(dir.path());
    let eval_loss_at = |step: i64| {
        history.iter().find(|e| e["step"] == step && e.get("eval_loss").is_some()).unwrap()["eval_loss"].as_f64()
    };
    assert_ne!(eval_loss_at(2), eval_loss_at(8));
    assert_eq!(results(dir.path())["eval_loss"].as_f64(), eval_loss_at(2));
    assert!(run.stderr.contains("the results' eval_* metrics are the evaluation at step 2, of the best checkpoint"));
}

#[test]
fn save_strategy_best_saves_only_improvements() {
    let dir = tempdir();
    let args = [
        "--num-train-epochs",
        "3",
        "--eval-strategy",
        "epoch",
        "--save-strategy",
        "best",
        "--metric-for-best-model",
        "accuracy",
    ];
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let history = log_history(dir.path());
    let accuracies: Vec<(i64, f64)> =
        history.iter().filter_map(|e| Some((e["step"].as_i64()?, e.get("eval_accuracy")?.as_f64()?))).collect();
    let mut best = f64::MIN;
    let expected: Vec<String> = accuracies
        .iter()
        .filter(|(_, a)| {
            let better = *a > best;
            best = best.max(*a);
            better
        })
        .map(|(s, _)| format!("checkpoint-{s}"))
        .collect();
    assert_eq!(checkpoints(dir.path()), expected);
}

/// Flips one byte in the middle of a file.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Sets a JSON value in a checkpoint file (`None`: empties the file) and records the new
/// checksum in the manifest, so that the file verifies: what a hand edit or a bug leaves.
fn edit_verified(checkpoint: &Path, file: &str, pointer: &str, value: Option<serde_json::Value>) {
    use sha2::{Digest, Sha256};
    let path = checkpoint.join(file);
    let text = match value {
        Some(value) => {
            let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            *json.pointer_mut(pointer).unwrap() = value;
            serde_json::to_string_pretty(&json).unwrap()
        }
        None => String::new(),
    };
    std::fs::write(&path, &text).unwrap();
    let manifest_path = checkpoint.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let digest: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    manifest["sha256"][file] = digest.into();
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

#[test]
fn verified_checkpoints_with_impossible_values_are_refused() {
    let dir = tempdir();
    let base = ["--num-train-epochs", "2", "--save-strategy", "epoch", "--eval-strategy", "no"];
    assert_eq!(host(dir.path(), &base).code, 0);
    let last = dir.path().join("output/checkpoint-58");
    let pristine = dir.path().join("pristine");
    assert!(Command::new("cp").arg("-r").arg(&last).arg(&pristine).status().unwrap().success());
    let cases: [(&str, &str, Option<serde_json::Value>, &str); 5] = [
        ("trainer_state.json", "/global_step", Some((-1).into()), "trainer_state.json: global_step -1 is negative"),
        (
            "trainer_state.json",
            "/epoch",
            Some(999.into()),
            "trainer_state.json: epoch 999 is not within num_train_epochs 2",
        ),
        ("trainer_state.json", "", None, "trainer_state.json is empty"),
        (
            "host_state.json",
            "/position/micro_batches_done",
            Some((-5).into()),
            "host_state.json at position.micro_batches_done",
        ),
        (
            "scheduler.json",
            "/skipped_steps",
            Some(59.into()),
            "scheduler.json: skipped_steps 59 is not within global_step 58",
        ),
    ];
    for (file, pointer, value, expected) in cases {
        std::fs::remove_dir_all(&last).unwrap();
        assert!(Command::new("cp").arg("-r").arg(&pristine).arg(&last).status().unwrap().success());
        edit_verified(&last, file, pointer, value);
        // Named explicitly: a one-line error naming the file and the value, nothing deleted.
        let mut args = base.to_vec();
        args.extend(["--resume-from-checkpoint", last.to_str().unwrap()]);
        host(dir.path(), &args).assert_clean_error(2, expected);
        assert_eq!(checkpoints(dir.path()), ["checkpoint-29", "checkpoint-58"]);
        // `latest` skips it with a warning and resumes from the one before.
        let mut args = base.to_vec();
        args.extend(["--resume-from-checkpoint", "latest", "--output-dir", "output"]);
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        assert!(
            run.stderr.contains("skipping output/checkpoint-58: ") && run.stderr.contains(expected),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("resumed from output/checkpoint-29"), "{}", run.stderr);
    }
}

#[test]
fn corrupt_checkpoints_are_detected() {
    let dir = tempdir();
    let base = ["--num-train-epochs", "2", "--save-strategy", "epoch", "--eval-strategy", "no"];
    assert_eq!(host(dir.path(), &base).code, 0);
    corrupt(&dir.path().join("output/checkpoint-58/model.safetensors"));
    // Named explicitly: a one-line error naming the bad file, nothing deleted.
    let bad = dir.path().join("output/checkpoint-58");
    let mut args = base.to_vec();
    args.extend(["--resume-from-checkpoint", bad.to_str().unwrap()]);
    host(dir.path(), &args)
        .assert_clean_error(2, "checkpoint-58/model.safetensors is corrupt (its checksum does not match the manifest)");
    assert_eq!(checkpoints(dir.path()), ["checkpoint-29", "checkpoint-58"]);
    // `latest` skips it with a warning and uses the one before.
    let mut args = base.to_vec();
    args.extend(["--resume-from-checkpoint", "latest"]);
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("skipping output/checkpoint-58: output/checkpoint-58/model.safetensors is corrupt"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("resumed from output/checkpoint-29"));
}

#[test]
fn bad_resume_requests_are_one_line_errors_and_delete_nothing() {
    let dir = tempdir();
    host(dir.path(), &["--resume-from-checkpoint", "no/such/checkpoint"]).assert_clean_error(
        2,
        "resume_from_checkpoint: no/such/checkpoint does not exist; give a checkpoint folder (output_dir/checkpoint-N) or latest",
    );
    // A path of the wrong kind is named as what it is, never as missing.
    std::fs::write(dir.path().join("a-file"), "not a checkpoint").unwrap();
    host(dir.path(), &["--resume-from-checkpoint", "a-file"])
        .assert_clean_error(2, "resume_from_checkpoint: a-file is a file; give a checkpoint folder");
    host(dir.path(), &["eval", "--checkpoint", "a-file"])
        .assert_clean_error(2, "checkpoint a-file is a file; give a checkpoint folder");
    std::fs::create_dir_all(dir.path().join("a-folder")).unwrap();
    std::fs::write(dir.path().join("text.jsonl"), "{\"text\": \"a b\"}\n").unwrap();
    host(dir.path(), &["--train-file", "text.jsonl", "--tokenizer-file", "a-folder", "--model", "gpt"])
        .assert_clean_error(2, "tokenizer_file a-folder is a folder; give a tokenizer.json file");
    std::fs::create_dir_all(dir.path().join("output")).unwrap();
    host(dir.path(), &["--resume-from-checkpoint", "latest"])
        .assert_clean_error(2, "resume_from_checkpoint=latest: no complete checkpoint in output");

    // A well-formed checkpoint of another model shape.
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let mut writer = host::engine::checkpoint::Writer::begin(&odd, 5).unwrap();
    let wrong = tch::Tensor::zeros([7, 64], (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&[("layers.0.weight", &wrong)], writer.path("model.safetensors")).unwrap();
    writer.finish_file("model.safetensors").unwrap();
    let ckpt = writer.commit().unwrap();
    std::fs::write(dir.path().join("output/keep.txt"), "user data").unwrap();
    host(dir.path(), &["--resume-from-checkpoint", ckpt.to_str().unwrap()])
        .assert_clean_error(2, "does not fit the model (missing: layers.0.bias");
    assert!(dir.path().join("output/keep.txt").exists());
    assert!(ckpt.join("model.safetensors").exists());
}

/// Runs the host until the fault-injection point kills it (SIGKILL).
fn killed_at(dir: &Path, point: &str, args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_host"))
        .current_dir(dir)
        .args(args)
        .env("HOST_FAULT_INJECTION", point)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the run should have been killed at {point}");
}

#[test]
fn a_crash_during_a_save_never_breaks_resume() {
    let base = ["--max-steps", "12", "--save-steps", "4", "--logging-steps", "2", "--eval-strategy", "no"];
    let straight = tempdir();
    assert_eq!(host(straight.path(), &base).code, 0);
    // The kill point fires in every save, so each run below dies in its first one (step 4).
    for point in ["after:model.safetensors", "after:optimizer.safetensors", "after:trainer_state.json", "before:rename"]
    {
        let dir = tempdir();
        killed_at(dir.path(), point, &base);
        // Nothing complete was saved: no checkpoint folder, only a temporary one.
        assert!(checkpoints(dir.path()).is_empty(), "{point}: a checkpoint appeared under its final name");
        let mut args = base.to_vec();
        args.extend(["--resume-from-checkpoint", "latest"]);
        host(dir.path(), &args).assert_clean_error(2, "no complete checkpoint");
        // Train again: training finishes, and no temporary folder is left.
        let run = host(dir.path(), &base);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        assert!(weights(dir.path()) == weights(straight.path()));
        let leftovers = std::fs::read_dir(dir.path().join("output"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0, "{point}: a temporary folder was left");
    }
}

/// A JSON value without its wall-clock figures, at any depth.
fn without_timings(mut value: serde_json::Value) -> serde_json::Value {
    match &mut value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !k.contains("runtime") && !k.contains("per_second"));
            for v in map.values_mut() {
                *v = without_timings(v.take());
            }
        }
        serde_json::Value::Array(items) => {
            for v in items.iter_mut() {
                *v = without_timings(v.take());
            }
        }
        _ => {}
    }
    value
}

fn json_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_run_killed_after_its_last_checkpoint_finishes_everything_on_resume() {
    // The last step (30) lies inside the second epoch (23 steps each): its checkpoint is
    // saved before that epoch's end, whose evaluation the resumed run must still make.
    let base = ["--max-steps", "30", "--save-steps", "10", "--save-total-limit", "3", "--logging-steps", "10"];
    let straight = tempdir();
    assert_eq!(host(straight.path(), &base).code, 0);
    let last_eval = log_history(straight.path()).into_iter().rev().find(|e| e.get("eval_loss").is_some()).unwrap();
    assert_eq!(last_eval["step"], 30, "the final evaluation follows the last step: {last_eval}");
    assert!(last_eval["epoch"].as_f64().unwrap().fract() > 0.0, "the last step should end inside an epoch");

    let resumed = tempdir();
    assert_eq!(host(resumed.path(), &base).code, 0);
    // Killed after checkpoint-30 was saved, before the final evaluation and files.
    for file in ["all_results.json", "model.safetensors", "trainer_state.json"] {
        std::fs::remove_file(resumed.path().join("output").join(file)).unwrap();
    }
    let mut args = base.to_vec();
    args.extend(["--resume-from-checkpoint", "latest"]);
    let run = host(resumed.path(), &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("resumed from output/checkpoint-30 at step 30"), "{}", run.stderr);

    let (a, b) = (straight.path().join("output"), resumed.path().join("output"));
    assert_eq!(file_names(&a), file_names(&b));
    for file in ["all_results.json", "trainer_state.json", "checkpoint-30/trainer_state.json"] {
        assert_eq!(without_timings(json_file(&a.join(file))), without_timings(json_file(&b.join(file))), "{file}");
    }
    assert_eq!(history_without_timings(straight.path()), history_without_timings(resumed.path()));
    assert!(weights(straight.path()) == weights(resumed.path()), "final weights differ");
    assert_eq!(results(resumed.path())["eval_loss"], last_eval["eval_loss"]);
}

#[test]
fn a_crash_after_good_checkpoints_resumes_from_the_last_complete_one() {
    let base = ["--max-steps", "12", "--save-steps", "4", "--logging-steps", "2", "--eval-strategy", "no"];
    let straight = tempdir();
    assert_eq!(host(straight.path(), &base).code, 0);
    let dir = tempdir();
    // A run stopped after saving 4 and 8; checkpoint-8 then lost; a resume from 4 killed
    // in the middle of saving 8 again.
    assert_eq!(run_with_recorder(dir.path(), &base, &["--plugin-config", "recorder.stop_at_step=8"]).code, 0);
    std::fs::remove_dir_all(dir.path().join("output/checkpoint-8")).unwrap();
    let mut resume = base.to_vec();
    resume.extend(["--resume-from-checkpoint", "latest"]);
    killed_at(dir.path(), "after:optimizer.safetensors", &resume);
    assert_eq!(checkpoints(dir.path()), ["checkpoint-4"]);
    let run = host(dir.path(), &resume);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("resumed from output/checkpoint-4"));
    assert_same_run(straight.path(), dir.path());
}

#[test]
fn sigterm_saves_a_checkpoint_and_exits_143() {
    stop_with_signal(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn sigint_saves_a_checkpoint_and_exits_130() {
    stop_with_signal(libc::SIGINT, "SIGINT", 130);
}

fn stop_with_signal(signal: i32, name: &str, code: i32) {
    let dir = tempdir();
    let args =
        ["--num-train-epochs", "1000", "--save-strategy", "no", "--eval-strategy", "no", "--logging-steps", "50"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_host"))
        .current_dir(dir.path())
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training runs (a log line with a step), then ask it to stop.
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let started = std::time::Instant::now();
    loop {
        let line = lines.next().expect("the run logs").unwrap();
        if line.contains("train step") {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "no training step logged");
    }
    unsafe { libc::kill(child.id() as i32, signal) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(code), "{rest:?}");
    let error = rest.iter().find(|l| l.starts_with("error:")).expect("an error line");
    assert!(error.starts_with(&format!("error: interrupted by {name}: saved output/checkpoint-")), "{error}");
    let saved: Vec<PathBuf> = checkpoints(dir.path()).iter().map(|n| dir.path().join("output").join(n)).collect();
    assert_eq!(saved.len(), 1);
    host::engine::checkpoint::verify(&saved[0]).unwrap();
}

#[test]
fn eval_and_predict_work_from_a_checkpoint_alone() {
    let dir = tempdir();
    let weighted = plugin("weighted_ce");
    let run =
        host(dir.path(), &["--plugin", path_str(&weighted), "--num-train-epochs", "2", "--save-strategy", "epoch"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let history_before = std::fs::read(dir.path().join("output/log_history.jsonl")).unwrap();
    let final_eval = log_history(dir.path()).into_iter().rfind(|e| e.get("eval_loss").is_some()).unwrap();

    // From another folder: everything comes from the checkpoint.
    let elsewhere = tempdir();
    let ckpt = dir.path().join("output/checkpoint-46");
    let ckpt = ckpt.to_str().unwrap();
    let eval = host(dir.path(), &["eval", "--checkpoint", ckpt]);
    assert_eq!(eval.code, 0, "stderr:\n{}", eval.stderr);
    let shown = |name: &str, value: f64| format!("{name:<26} = {value:.4}");
    assert!(eval.stdout.contains(&shown("eval_loss", final_eval["eval_loss"].as_f64().unwrap())), "{}", eval.stdout);
    assert!(eval.stdout.contains(&shown("eval_accuracy", final_eval["eval_accuracy"].as_f64().unwrap())));

    let output = elsewhere.path().join("predictions.jsonl");
    let predict = host(dir.path(), &["predict", "--checkpoint", ckpt, "--output", output.to_str().unwrap()]);
    assert_eq!(predict.code, 0, "stderr:\n{}", predict.stderr);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 359, "one line per evaluation example");
    let correct = lines.iter().filter(|l| l["prediction"] == l["label"]).count();
    let accuracy = correct as f64 / lines.len() as f64;
    assert!((accuracy - final_eval["eval_accuracy"].as_f64().unwrap()).abs() < 1e-9);
    let probabilities: f64 = lines[0]["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((probabilities - 1.0).abs() < 1e-5);
    assert!(predict.stdout.contains(&shown("test_accuracy", accuracy)), "{}", predict.stdout);

    // Neither touched the run's files.
    assert_eq!(std::fs::read(dir.path().join("output/log_history.jsonl")).unwrap(), history_before);
    host(dir.path(), &["eval", "--checkpoint", "missing"]).assert_clean_error(2, "checkpoint missing does not exist");
}

#[test]
fn a_stateful_loss_plugin_resumes_with_its_state() {
    // The loss counts its calls and turns the 15th into NaN; only a restored count puts the
    // NaN at the same step after a resume.
    let base = [
        "--loss",
        "nan_on_call",
        "--plugin-config",
        "nan_on_call.nan_on_call=15",
        "--max-steps",
        "20",
        "--save-steps",
        "5",
        "--logging-steps",
        "1",
        "--eval-strategy",
        "no",
    ];
    let straight = tempdir();
    assert_eq!(run_with_recorder(straight.path(), &base, &[]).code, 0);
    let resumed = tempdir();
    assert_eq!(run_with_recorder(resumed.path(), &base, &["--plugin-config", "recorder.stop_at_step=12"]).code, 0);
    let checkpoint = resumed.path().join("output/checkpoint-10");
    let host_state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("host_state.json")).unwrap()).unwrap();
    assert_eq!(host_state["loss_state"], serde_json::json!({ "calls": 10 }));
    let run = run_with_recorder(resumed.path(), &base, &["--resume-from-checkpoint", checkpoint.to_str().unwrap()]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert_same_run(straight.path(), resumed.path());
}

#[test]
fn inconsistent_saving_settings_are_one_line_errors() {
    let dir = tempdir();
    host(dir.path(), &["--load-best-model-at-end", "--eval-strategy", "no"])
        .assert_clean_error(2, "load_best_model_at_end needs evaluations");
    host(dir.path(), &["--load-best-model-at-end", "--eval-strategy", "epoch", "--save-strategy", "steps"])
        .assert_clean_error(
        2,
        "load_best_model_at_end needs save_strategy to match eval_strategy (save_strategy=steps, eval_strategy=epoch)",
    );
    host(
        dir.path(),
        &["--load-best-model-at-end", "--eval-strategy", "steps", "--eval-steps", "3", "--save-steps", "5"],
    )
    .assert_clean_error(2, "load_best_model_at_end needs save_steps to be a multiple of eval_steps");
    host(dir.path(), &["--save-strategy", "best", "--eval-strategy", "no"])
        .assert_clean_error(2, "save_strategy=best needs evaluations");
    host(dir.path(), &["--save-total-limit", "0"]).assert_clean_error(2, "save_total_limit must be at least 1 (got 0)");
    host(dir.path(), &["--metric-for-best-model", "f2"]).assert_clean_error(
        2,
        "metric_for_best_model 'f2' is not an evaluation metric (one of: loss, accuracy, f1, perplexity, exact_match, or a metric plugin's)",
    );
    // Known, but not one the digits classifier reports: found at the first evaluation.
    host(dir.path(), &["--metric-for-best-model", "perplexity", "--eval-strategy", "steps", "--eval-steps", "2"])
        .assert_clean_error(2, "metric_for_best_model 'eval_perplexity' is not among this model's evaluation metrics (eval_loss, eval_accuracy, eval_f1, eval_runtime");
}

#[test]
fn eval_from_an_inconsistent_checkpoint_names_the_checkpoint_not_init_weights() {
    let dir = tempdir();
    let run = host(dir.path(), &["--max-steps", "2", "--save-steps", "2", "--eval-strategy", "no"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let checkpoint = dir.path().join("output/checkpoint-2");
    edit_verified(&checkpoint, "host_state.json", "/run_config/hidden_size", Some(96.into()));
    let run = host(dir.path(), &["eval", "--checkpoint", checkpoint.to_str().unwrap()]);
    run.assert_clean_error(2, "host_state.json's model and the weights differ");
    assert!(!run.stderr.contains("init_weights"), "{}", run.stderr);
}

#[test]
fn the_final_files_are_a_set_that_a_reader_can_check() {
    use sha2::{Digest, Sha256};
    let sha256 = |path: &Path| -> String {
        Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let base = ["--max-steps", "6", "--save-strategy", "no", "--logging-steps", "3"];
    let dir = tempdir();
    assert_eq!(host(dir.path(), &base).code, 0);
    let output = dir.path().join("output");
    let manifest = json_file(&output.join("outputs.json"));
    assert_eq!(manifest["global_step"], 6);
    for file in ["model.safetensors", "trainer_state.json", "all_results.json", "log_history.jsonl"] {
        assert_eq!(manifest["sha256"][file], sha256(&output.join(file)), "{file}");
    }
    // A second run into the folder killed while it writes its final files: the earlier
    // set is no longer claimed complete, though some of its files are still there.
    killed_at(dir.path(), "final:all_results.json", &["--max-steps", "9", "--save-strategy", "no"]);
    assert!(!output.join("outputs.json").exists(), "a mixed set must not look complete");
    assert!(output.join("all_results.json").is_file());
    // A dead merge_lora write leaves its temporary inside merged/.
    std::fs::create_dir_all(output.join("merged")).unwrap();
    std::fs::write(output.join("merged/.tmp-host-model.safetensors-1"), "half").unwrap();
    // The next run writes a complete set again and leaves no temporary file.
    assert_eq!(host(dir.path(), &base).code, 0);
    assert_eq!(file_names(&output.join("merged")), Vec::<String>::new(), "a stray temporary in merged/ stays");
    assert_eq!(
        json_file(&output.join("outputs.json"))["sha256"]["all_results.json"],
        sha256(&output.join("all_results.json"))
    );
    let leftovers: Vec<String> = file_names(&output).into_iter().filter(|n| n.starts_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn eval_and_predict_take_another_file_than_the_runs() {
    // Two runs that differ only in their evaluation file train alike; the first one's
    // checkpoint evaluated on the second's file gives the second's final evaluation.
    let dir = tempdir();
    let table = |seed: u64, n: usize| -> String {
        let mut text = "a,b,c,label\n".to_owned();
        for i in 0..n as u64 {
            let x = (i * 7 + seed * 13) % 11;
            let y = (i * 5 + seed) % 7;
            text += &format!("{x},{y},{},{}\n", (x + y) % 5, usize::from(x > y));
        }
        text
    };
    for (name, seed, n) in [("train.csv", 1, 120), ("first.csv", 2, 40), ("second.csv", 3, 30)] {
        std::fs::write(dir.path().join(name), table(seed, n)).unwrap();
    }
    let common = [
        "--train-file",
        "train.csv",
        "--num-train-epochs",
        "2",
        "--save-strategy",
        "epoch",
        "--eval-strategy",
        "epoch",
    ];
    let run = host(dir.path(), &[&common[..], &["--eval-file", "first.csv", "--output-dir", "a"]].concat());
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let run = host(dir.path(), &[&common[..], &["--eval-file", "second.csv", "--output-dir", "b"]].concat());
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let results = |out: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(out).join("all_results.json")).unwrap()).unwrap()
    };
    let (a, b) = (results("a"), results("b"));
    assert_ne!(a["eval_loss"], b["eval_loss"], "the two files differ");
    let steps = std::fs::read_dir(dir.path().join("a")).unwrap().flatten().filter_map(|e| {
        e.file_name().to_string_lossy().strip_prefix("checkpoint-").and_then(|n| n.parse::<i64>().ok())
    });
    let last = dir.path().join(format!("a/checkpoint-{}", steps.max().unwrap()));
    let eval = host(dir.path(), &["eval", "--checkpoint", path_str(&last), "--eval-file", "second.csv"]);
    assert_eq!(eval.code, 0, "stderr:\n{}", eval.stderr);
    let shown = format!("{:<26} = {:.4}", "eval_loss", b["eval_loss"].as_f64().unwrap());
    assert!(eval.stdout.contains(&shown), "{shown} in:\n{}", eval.stdout);
    let output = dir.path().join("second.jsonl");
    let predict = host(
        dir.path(),
        &["predict", "--checkpoint", path_str(&last), "--test-file", "second.csv", "--output", path_str(&output)],
    );
    assert_eq!(predict.code, 0, "stderr:\n{}", predict.stderr);
    assert_eq!(std::fs::read_to_string(&output).unwrap().lines().count(), 30, "one line per example of second.csv");
}
