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
