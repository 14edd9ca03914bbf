//! transformers' TrainingArguments names beyond the basics: every name answered (each
//! refusal with its own reason), and the ones implemented, end to end.

use std::path::Path;

use host::config::hf_arguments::{Answer, ANSWERS};

use crate::support::*;

/// A value that is not Hugging Face's default for the name.
fn other_than(defaults: &[&str]) -> &'static str {
    match defaults {
        d if d.contains(&"false") => "true",
        ["true"] => "false",
        ["0"] => "2",
        _ => "x",
    }
}

#[test]
fn every_other_transformers_name_is_accepted_or_refused_with_its_reason() {
    let dir = tempdir();
    for (name, answer) in ANSWERS {
        let flag = format!("--{}", name.replace('_', "-"));
        match answer {
            Answer::Refused { defaults, reason } => {
                let value = other_than(defaults);
                let run = host(dir.path(), &["--print-config", &flag, value]);
                let expected = format!("flags: {name} = {value} is not supported: {reason}");
                run.assert_clean_error(2, &expected);
                // Hugging Face's default value is fine.
                if let Some(default) = defaults.first().filter(|d| !d.is_empty()) {
                    let run = host(dir.path(), &["--print-config", &flag, default]);
                    assert_eq!(run.code, 0, "{flag} {default}: {}", run.stderr);
                }
            }
            Answer::NoEffect(reason) => {
                let run = host(dir.path(), &["--print-config", &flag, "1"]);
                assert_eq!(run.code, 0, "{flag}: {}", run.stderr);
                assert!(run.stderr.contains(&format!("{name} = 1: no effect here: {reason}")), "{}", run.stderr);
            }
        }
    }
    // The same names in a config file, with Python's spelling of booleans.
    std::fs::write(dir.path().join("run.toml"), "push_to_hub = \"True\"\n").unwrap();
    let run = host(dir.path(), &["--print-config", "--config", "run.toml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.error_line().starts_with(
            "error: config run.toml or flags: push_to_hub = true is not supported: the host never uploads"
        ),
        "{}",
        run.error_line()
    );
}

#[test]
fn report_to_loads_the_stock_logging_callbacks_by_name() {
    plugin("tensorboard"); // Builds the stock plugins next to the host binary.
    let dir = tempdir();
    let run = host(dir.path(), &["--max-steps", "4", "--logging-steps", "2", "--report-to", "all", "--run-name", "r1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("callback: tensorboard"), "{}", run.stderr);
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("output/runs")).unwrap().flatten().collect();
    assert!(runs.iter().any(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents")), "{runs:?}");
    let csv = std::fs::read_to_string(dir.path().join("output/log.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 + 1 + 1, "header, two loss logs, the evaluation, the final metrics:\n{csv}");
    let run = host(dir.path(), &["--max-steps", "1", "--report-to", "wandb"]);
    assert_eq!(run.code, 2);
    assert!(run.error_line().contains("report_to 'wandb' is not available"), "{}", run.error_line());
}

/// A tiny `--model gpt` on the data `token_data` writes.
const TINY_GPT: [&str; 12] = [
    "--model",
    "gpt",
    "--train-file",
    "tokens.safetensors",
    "--eval-file",
    "tokens.safetensors",
    "--hidden-size",
    "16",
    "--num-hidden-layers",
    "1",
    "--max-seq-length",
    "8",
];

/// Token data for `--model gpt`: 16 sequences of 8 ids, next-token labels.
fn token_data(dir: &Path) {
    let generator = generator_lock();
    let ids = tch::Tensor::randint(40, [16, 8], (tch::Kind::Int64, tch::Device::Cpu));
    drop(generator);
    // As transformers: labels aligned with input_ids (the host shifts them when reading).
    let file = dir.join("tokens.safetensors");
    tch::Tensor::write_safetensors(&[("input_ids", &ids), ("labels", &ids)], file).unwrap();
}

#[test]
fn token_counts_loss_only_evaluation_and_log_level() {
    let dir = tempdir();
    token_data(dir.path());
    let args = [
        &TINY_GPT[..],
        &[
            "--per-device-train-batch-size",
            "8",
            "--max-steps",
            "4",
            "--logging-steps",
            "1",
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "2",
            "--include-num-input-tokens-seen",
            "true",
            "--prediction-loss-only",
            "--label-smoothing-factor",
            "0.1",
            "--full-determinism",
            "--log-level",
            "warning",
            "--use-cpu",
        ][..],
    ]
    .concat();
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("INFO"), "log_level warning:\n{}", run.stderr);
    let history = log_history(dir.path());
    for entry in &history {
        let step = entry["step"].as_i64().unwrap();
        // 8 sequences of 8 tokens a step, padding included ("all").
        assert_eq!(entry["num_input_tokens_seen"].as_f64(), Some((64 * step) as f64), "{entry}");
        if entry.get("loss").is_some() {
            assert!(entry["train_tokens_per_second"].as_f64().unwrap() > 0.0, "{entry}");
        }
        if entry.get("eval_loss").is_some() {
            let keys: Vec<&str> = entry.as_object().unwrap().keys().map(String::as_str).collect();
            assert!(!keys.iter().any(|k| k.contains("accuracy") || k.contains("perplexity")), "{keys:?}");
        }
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("output/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["num_input_tokens_seen"], 256);
    // total_flos: 6 x tokens x the parameters outside the embeddings.
    assert!(state["total_flos"].as_f64().unwrap() > 0.0);
}

#[test]
fn neftune_noise_changes_training_not_evaluation() {
    let dir = tempdir();
    token_data(dir.path());
    let base = [
        &TINY_GPT[..],
        &["--max-steps", "3", "--logging-steps", "1", "--eval-strategy", "no", "--learning-rate", "0"][..],
    ]
    .concat();
    let losses = |extra: &[&str], out: &str| -> (Vec<f64>, f64) {
        let run = host(dir.path(), &[&base[..], extra, &["--output-dir", out, "--do-eval"]].concat());
        assert_eq!(run.code, 0, "{}", run.stderr);
        let text = std::fs::read_to_string(dir.path().join(out).join("log_history.jsonl")).unwrap();
        let history: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let train = history.iter().filter_map(|e| e["loss"].as_f64()).collect();
        let eval = history.iter().find_map(|e| e["eval_loss"].as_f64()).unwrap();
        (train, eval)
    };
    // Learning rate 0: the weights never change, so only the noise moves the losses.
    let (plain, plain_eval) = losses(&[], "plain");
    let (noisy, noisy_eval) = losses(&["--neftune-noise-alpha", "15"], "noisy");
    assert!(plain.iter().zip(&noisy).all(|(a, b)| a != b), "{plain:?} vs {noisy:?}");
    assert_eq!(plain_eval, noisy_eval, "no noise in evaluation");
    let run = host(dir.path(), &["--max-steps", "1", "--neftune-noise-alpha", "5"]);
    run.assert_clean_error(
        2,
        "neftune_noise_alpha needs a model with token embeddings (pretrained, transformer, gpt), not mlp",
    );
}

#[test]
fn do_eval_and_do_predict_without_training() {
    let dir = tempdir();
    let run = host(dir.path(), &["--do-train", "false", "--do-eval", "--do-predict", "--max-eval-samples", "50"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let output = dir.path().join("output");
    assert!(!output.join("model.safetensors").exists(), "nothing trained, nothing saved");
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("eval_results.json")).unwrap()).unwrap();
    assert!(eval["eval_loss"].as_f64().unwrap() > 1.0, "an untrained model: {eval}");
    let predict: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("predict_results.json")).unwrap()).unwrap();
    assert_eq!(predict["test_loss"], eval["eval_loss"], "the same model on the same data");
    assert_eq!(std::fs::read_to_string(output.join("predictions.jsonl")).unwrap().lines().count(), 50);
    let all = results(dir.path());
    assert_eq!(all["test_loss"], predict["test_loss"]);
    let run = host(dir.path(), &["--do-train", "false"]);
    assert_eq!(run.code, 2);
    assert!(run.error_line().contains("nothing to do"), "{}", run.error_line());
}

#[test]
fn auto_find_batch_size_runs_the_step_again_in_smaller_micro_batches() {
    let dir = tempdir();
    let common = ["--max-steps", "6", "--eval-strategy", "no", "--save-strategy", "no", "--logging-steps", "2"];
    // Micro-batches of more than 8 examples fail as a CPU allocation failure does.
    let oom = [("HOST_FAULT_OOM_ABOVE_BATCH", "8")];
    let big = ["--per-device-train-batch-size", "32", "--output-dir", "auto"];
    let run = host_with_env(dir.path(), &[&common[..], &big, &["--auto-find-batch-size"]].concat(), &oom);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (from, to, accumulation) in [(32, 16, 2), (16, 8, 4)] {
        let said = format!("out of memory at per_device_train_batch_size {from}; the step runs again with {to} and gradient_accumulation_steps {accumulation} (the same 32 examples a step)");
        assert!(run.stderr.contains(&said), "{}", run.stderr);
    }
    // The same examples in each step as a run made with those sizes from the start.
    let small = ["--per-device-train-batch-size", "8", "--gradient-accumulation-steps", "4", "--output-dir", "small"];
    let run = host(dir.path(), &[&common[..], &small].concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let weights = |out: &str| std::fs::read(dir.path().join(out).join("model.safetensors")).unwrap();
    assert!(weights("auto") == weights("small"), "the retried run trained on other data");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("auto/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["train_batch_size"], 8);
    // Without it, the failure is an error naming the batch size.
    let run = host_with_env(dir.path(), &[&common[..], &big].concat(), &oom);
    run.assert_clean_error(1, "out of memory allocating 32.0 MB for training step 1 (per_device_train_batch_size 32)");
}

#[test]
fn dataloader_workers_hand_out_the_same_batches_in_the_same_order() {
    let dir = tempdir();
    let common = ["--max-steps", "40", "--eval-strategy", "no", "--save-strategy", "no", "--logging-steps", "10"];
    let weights = |extra: &[&str], out: &str| {
        let run = host(dir.path(), &[&common[..], extra, &["--output-dir", out]].concat());
        assert_eq!(run.code, 0, "{}", run.stderr);
        std::fs::read(dir.path().join(out).join("model.safetensors")).unwrap()
    };
    let plain = weights(&[], "plain");
    let three = weights(&["--dataloader-num-workers", "3", "--dataloader-prefetch-factor", "1"], "three");
    assert!(plain == three, "three workers trained on other batches");
    let run = host(dir.path(), &["--max-steps", "1", "--dataloader-prefetch-factor", "2"]);
    run.assert_clean_error(2, "dataloader_prefetch_factor needs dataloader_num_workers > 0");
}

#[test]
fn model_only_checkpoints_cannot_resume_and_say_so() {
    let dir = tempdir();
    let run =
        host(dir.path(), &["--max-steps", "4", "--save-steps", "2", "--save-only-model", "--eval-strategy", "no"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let checkpoint = dir.path().join("output/checkpoint-4");
    assert!(checkpoint.join("model.safetensors").is_file());
    for resume_only in ["optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state.safetensors"] {
        assert!(!checkpoint.join(resume_only).exists(), "{resume_only} in a model-only checkpoint");
    }
    let run = host(dir.path(), &["--max-steps", "6", "--resume-from-checkpoint", "latest", "--eval-strategy", "no"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.error_line().contains("was saved with save_only_model"), "{}", run.error_line());
    // Its model evaluates as any checkpoint's does.
    let run = host(dir.path(), &["eval", "--checkpoint", path_str(&checkpoint)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("eval_accuracy"), "{}", run.stdout);
}

#[test]
fn negative_numbers_after_a_space_are_values_checked_by_name() {
    let dir = tempdir();
    for (value, shown) in [("-1e-3", "-0.001"), ("-inf", "-inf"), ("-1", "-1")] {
        host(dir.path(), &["--learning-rate", value, "--max-steps", "1"])
            .assert_clean_error(2, &format!("learning_rate must be >= 0 (got {shown})"));
    }
    host(dir.path(), &["generate", "--model", "none", "--prompt", "a", "--max-new-tokens", "-1"])
        .assert_clean_error(2, "max_new_tokens must be at least 1 (got -1)");
    // A text flag still takes no flag for its value.
    let run = host(dir.path(), &["--output-dir", "--max-steps", "1"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("a value is required for '--output-dir <OUTPUT_DIR>'"), "{}", run.stderr);
}

#[test]
fn a_json_dump_of_training_arguments_is_a_config_file() {
    // What HF users have: TrainingArguments(...).to_json_string(), every field with HF's
    // defaults (lists, a dict, nulls, do_train false) and the few they set.
    let dir = tempdir();
    let script = "from transformers import TrainingArguments\n\
        a = TrainingArguments(output_dir='output', max_steps=6, learning_rate=3e-3, logging_steps=2, \
        lr_scheduler_type='constant', report_to=[], save_strategy='no', use_cpu=True, per_device_train_batch_size=32)\n\
        open('args.json', 'w').write(a.to_json_string())\n";
    let made = std::process::Command::new(repo().join(".venv/bin/python"))
        .args(["-c", script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let run = host(dir.path(), &["--config", "args.json"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let losses: Vec<serde_json::Value> =
        log_history(dir.path()).into_iter().filter(|e| e.get("loss").is_some()).collect();
    assert_eq!(losses.iter().map(|e| e["step"].as_i64().unwrap()).collect::<Vec<_>>(), [2, 4, 6]);
    assert!(losses.iter().all(|e| e["learning_rate"].as_f64() == Some(3e-3)), "{losses:?}");
    // The defaults that change nothing get one line, not one each.
    let lines = run.stderr.lines().filter(|l| l.contains("no effect here")).count();
    assert_eq!(lines, 1, "{}", run.stderr);
    assert!(run.stderr.contains("do_train, do_eval and do_predict are all false"), "{}", run.stderr);
    // A JSON file that is not an object of arguments is one line naming it.
    std::fs::write(dir.path().join("bad.json"), "[1, 2]").unwrap();
    host(dir.path(), &["--config", "bad.json"])
        .assert_clean_error(2, "config file bad.json: not a JSON object of training arguments");
}

#[test]
fn boolean_flags_read_yes_and_no_as_hf_does() {
    // HF's string_to_bool: yes/no, true/false in any case, 1/0.
    let dir = tempdir();
    let first_logged = |value: &str| -> bool {
        let args =
            ["--max-steps", "3", "--logging-steps", "10", "--save-strategy", "no", "--logging-first-step", value];
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "{value}: {}", run.stderr);
        log_history(dir.path()).iter().any(|e| e.get("loss").is_some() && e["step"] == 1)
    };
    assert!(first_logged("yes") && first_logged("True") && first_logged("1"));
    assert!(!first_logged("no") && !first_logged("False"));
    host(dir.path(), &["--logging-first-step", "maybe"])
        .assert_clean_error(2, "invalid value 'maybe' for '--logging-first-step [<BOOL>]'");
}
