//! Callback events: Hugging Face's order, and control flags the host honours.

use crate::support::*;

/// The run that scripts/fixtures/hf_event_order.py makes with Hugging Face Trainer.
const HF_RUN: &[&str] = &[
    "--max-train-samples",
    "10",
    "--max-eval-samples",
    "4",
    "--num-train-epochs",
    "2",
    "--per-device-train-batch-size",
    "2",
    "--per-device-eval-batch-size",
    "2",
    "--gradient-accumulation-steps",
    "2",
    "--eval-strategy",
    "epoch",
    "--logging-steps",
    "2",
    "--save-strategy",
    "no",
];

fn recorder_run(dir: &std::path::Path, extra: &[&str]) -> (Run, Vec<String>) {
    let record = dir.join("events.txt");
    let config = format!("recorder.path={}", record.display());
    let fixtures = plugin("test_fixtures");
    let mut args = vec![
        "--plugin",
        path_str(&fixtures),
        "--loss",
        "builtin",
        "--callback",
        "recorder",
        "--plugin-config",
        &config,
    ];
    args.extend_from_slice(extra);
    let run = host(dir, &args);
    let events = std::fs::read_to_string(&record).unwrap_or_default().lines().map(str::to_owned).collect();
    (run, events)
}

#[test]
fn event_order_equals_hugging_face() {
    let dir = tempdir();
    let (run, events) = recorder_run(dir.path(), HF_RUN);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let expected: Vec<String> = include_str!("../fixtures/hf_event_order.txt").lines().map(str::to_owned).collect();
    assert_eq!(events, expected);
}

#[test]
fn should_training_stop_at_step_n_stops_there() {
    let dir = tempdir();
    let (run, events) = recorder_run(
        dir.path(),
        &[
            "--plugin-config",
            "recorder.stop_at_step=7",
            "--plugin-config",
            "recorder.with_step=true",
            "--logging-steps",
            "1",
        ],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let step_ends: Vec<&String> = events.iter().filter(|e| e.starts_with("on_step_end")).collect();
    assert_eq!(step_ends.last().unwrap().as_str(), "on_step_end 7");
    assert_eq!(step_ends.len(), 7);
    assert_eq!(events.last().unwrap(), "on_train_end 7");
    let history = log_history(dir.path());
    assert_eq!(history.last().unwrap()["step"], 7);
    let train_steps: Vec<i64> =
        history.iter().filter(|e| e.get("loss").is_some()).map(|e| e["step"].as_i64().unwrap()).collect();
    assert_eq!(train_steps, (1..=7).collect::<Vec<_>>());
}

#[test]
fn callbacks_receive_trainer_state() {
    let dir = tempdir();
    let (run, events) = recorder_run(dir.path(), &["--plugin-config", "recorder.with_step=true", "--max-steps", "3"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let step_ends: Vec<&str> = events.iter().filter(|e| e.starts_with("on_step_end")).map(String::as_str).collect();
    assert_eq!(step_ends, ["on_step_end 1", "on_step_end 2", "on_step_end 3"]);
}

#[test]
fn callbacks_receive_the_logs_and_metrics_that_are_logged() {
    let dir = tempdir();
    let (run, lines) = recorder_run(
        dir.path(),
        &[
            "--plugin-config",
            "recorder.with_metrics=true",
            "--max-steps",
            "6",
            "--logging-steps",
            "2",
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "3",
        ],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    // Each on_log line is followed by the logs it received; on_evaluate by its metrics.
    let mut seen_by_callback: Vec<serde_json::Value> = Vec::new();
    let mut evaluate_metrics: Vec<serde_json::Value> = Vec::new();
    for pair in lines.windows(2) {
        match pair[0].as_str() {
            "on_log" => seen_by_callback.push(serde_json::from_str(&pair[1]).unwrap()),
            "on_evaluate" => evaluate_metrics.push(serde_json::from_str(&pair[1]).unwrap()),
            _ => {}
        }
    }
    let history = log_history(dir.path());
    assert_eq!(seen_by_callback.len(), history.len());
    for (logs, mut entry) in seen_by_callback.into_iter().zip(history) {
        entry.as_object_mut().unwrap().remove("step");
        assert_eq!(logs, entry, "on_log received what log_history.jsonl recorded");
    }
    assert_eq!(evaluate_metrics.len(), 2);
    assert!(evaluate_metrics[0]["eval_accuracy"].as_f64().is_some());
    assert!(evaluate_metrics[0]["epoch"].as_f64().is_some(), "as HF, on_evaluate metrics carry the epoch");
}
