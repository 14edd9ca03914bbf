//! Built-in models and TorchScript modules, with the example jobs in examples/ on small
//! sizes.

use std::path::Path;
use std::process::Command;

use crate::support::*;

fn venv_python(args: &[&str], dir: &Path) {
    let status = Command::new(repo().join(".venv/bin/python"))
        .args(args)
        .current_dir(dir)
        .status()
        .expect("run the venv's python (scripts/setup.sh makes it)");
    assert!(status.success(), "python {args:?} failed");
}

fn metric(dir: &Path, name: &str) -> f64 {
    results(dir)[name].as_f64().unwrap_or_else(|| panic!("no {name} in {}", results(dir)))
}

#[test]
fn cnn_example_classifies_digits_as_images() {
    let dir = tempdir();
    let config = repo().join("examples/cnn_digits/job.toml");
    let run = host(dir.path(), &["--config", path_str(&config), "--num-train-epochs", "3", "--save-strategy", "no"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(metric(dir.path(), "eval_accuracy") > 0.9, "{}", results(dir.path()));
    assert!(metric(dir.path(), "eval_f1") > 0.9, "{}", results(dir.path()));
    // The convolutions are there under PyTorch-style names.
    let weights = tch::Tensor::read_safetensors(dir.path().join("output/model.safetensors")).unwrap();
    let names: Vec<&str> = weights.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"features.0.weight") && names.contains(&"features.3.weight"), "{names:?}");
}

#[test]
fn gpt_example_learns_to_complete_sums() {
    let dir = tempdir();
    let example = repo().join("examples/gpt_addition");
    let status = Command::new("python3")
        .arg(example.join("make_corpus.py"))
        .args(["--limit", "10", "--eval-share", "0.01", "--out", "data"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(example.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    // Small: evaluated on its own training sums, before and after 300 steps.
    let run = host(
        dir.path(),
        &[
            "--config",
            path_str(&example.join("job.toml")),
            "--eval-file",
            "data/train.jsonl",
            "--hidden-size",
            "64",
            "--max-steps",
            "300",
            "--per-device-train-batch-size",
            "32",
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "300",
            "--eval-on-start",
            "--save-strategy",
            "no",
            "--load-best-model-at-end",
            "false",
        ],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let evals: Vec<serde_json::Value> =
        log_history(dir.path()).into_iter().filter(|e| e.get("eval_exact_match").is_some()).collect();
    assert_eq!(evals.len(), 2, "{evals:?}");
    assert_eq!(evals[0]["eval_exact_match"], 0.0);
    assert!(evals[1]["eval_exact_match"].as_f64().unwrap() >= 0.9, "{evals:?}");
    let perplexity = |e: &serde_json::Value| e["eval_perplexity"].as_f64().unwrap();
    assert!(perplexity(&evals[1]) < perplexity(&evals[0]) / 10.0, "{evals:?}");
    let loss = evals[1]["eval_loss"].as_f64().unwrap();
    assert!((perplexity(&evals[1]) - loss.exp()).abs() < 1e-9);

    // weighted_ce (uniform) over token logits [N, T, V] equals the built-in loss.
    let job = example.join("job.toml");
    let short = |extra: &[&str]| {
        let mut args = vec!["--config", path_str(&job), "--max-steps", "4", "--hidden-size", "32"];
        args.extend([
            "--eval-strategy",
            "steps",
            "--eval-steps",
            "4",
            "--save-strategy",
            "no",
            "--load-best-model-at-end",
            "false",
        ]);
        args.extend_from_slice(extra);
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
        history_without_timings(dir.path())
    };
    let weighted_ce = plugin("weighted_ce");
    assert_eq!(short(&["--plugin", path_str(&weighted_ce)]), short(&[]));
}

#[test]
fn transformer_classifies_token_sequences() {
    let dir = tempdir();
    // Label: whether the text holds a 7.
    let mut text = String::new();
    for a in 0..30 {
        for b in 0..10 {
            let sum = format!("{a}+{b}");
            text += &format!("{{\"text\": \"{sum}\", \"label\": {}}}\n", u8::from(sum.contains('7')));
        }
    }
    std::fs::write(dir.path().join("texts.jsonl"), text).unwrap();
    let tokenizer = repo().join("examples/gpt_addition/tokenizer.json");
    let run = host(
        dir.path(),
        &[
            "--model",
            "transformer",
            "--train-file",
            "texts.jsonl",
            "--tokenizer-file",
            path_str(&tokenizer),
            "--hidden-size",
            "32",
            "--num-attention-heads",
            "2",
            "--num-train-epochs",
            "15",
            "--learning-rate",
            "3e-3",
            "--per-device-train-batch-size",
            "16",
            "--eval-strategy",
            "epoch",
            "--save-strategy",
            "no",
        ],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(metric(dir.path(), "eval_accuracy") > 0.9, "{}", results(dir.path()));
}

#[test]
fn torchscript_module_fine_tunes_with_a_loss_plugin_resumes_and_loads_back_into_pytorch() {
    let dir = tempdir();
    let d = dir.path();
    let example = repo().join("examples/torchscript_finetune");
    let script = example.join("export_model.py");
    venv_python(&[path_str(&script), "export", "."], d);
    let config = example.join("job.toml");
    let plugin_path = plugin("weighted_ce");
    let base = ["--config", path_str(&config), "--plugin", path_str(&plugin_path), "--max-steps", "24"];
    let mut args = base.to_vec();
    args.extend(["--save-strategy", "steps", "--save-steps", "12", "--logging-steps", "4"]);
    let run = host(d, &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("loss: weighted_ce (plugin weighted_ce)"), "{}", run.stderr);
    let losses: Vec<f64> = log_history(d).iter().filter_map(|e| e.get("loss").and_then(|v| v.as_f64())).collect();
    assert!(losses.last().unwrap() < &(losses[0] * 0.8), "the loss did not fall: {losses:?}");

    // The saved weights load into the same PyTorch class (strict names) and give the
    // probabilities the host predicts from its checkpoint.
    let predictions = d.join("predictions.jsonl");
    let predict = host(d, &["predict", "--checkpoint", "output/checkpoint-24", "--output", path_str(&predictions)]);
    assert_eq!(predict.code, 0, "stderr:\n{}", predict.stderr);
    venv_python(&[path_str(&script), "outputs", ".", "output/model.safetensors"], d);
    let torch: Vec<Vec<f64>> =
        serde_json::from_str(&std::fs::read_to_string(d.join("torch_outputs.json")).unwrap()).unwrap();
    let ours: Vec<Vec<f64>> = std::fs::read_to_string(&predictions)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_value(serde_json::from_str::<serde_json::Value>(l).unwrap()["probabilities"].clone())
                .unwrap()
        })
        .collect();
    assert_eq!(ours.len(), 128);
    let largest = ours.iter().flatten().zip(torch.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(largest < 1e-5, "host and PyTorch outputs differ by {largest}");

    // Labels beyond the module's four outputs are a clear error, not a crash.
    let input = tch::Tensor::zeros([8, 16], (tch::Kind::Float, tch::Device::Cpu));
    let labels = tch::Tensor::from_slice(&[0i64, 1, 2, 3, 9, 1, 2, 3]);
    tch::Tensor::write_safetensors(&[("input", &input), ("labels", &labels)], d.join("wide.safetensors")).unwrap();
    let wide = ["--model", "torchscript:model.pt", "--train-file", "wide.safetensors", "--output-dir", "wide"];
    host(d, &[&wide[..], &["--eval-strategy", "epoch"]].concat())
        .assert_clean_error(2, "the labels do not fit the model's logits [");

    // Resuming from the step-12 checkpoint ends with the same weights.
    let resumed = tempdir();
    let r = resumed.path();
    for file in ["model.pt", "train.safetensors", "eval.safetensors"] {
        std::fs::copy(d.join(file), r.join(file)).unwrap();
    }
    std::fs::create_dir(r.join("output")).unwrap();
    let copy =
        Command::new("cp").arg("-r").arg(d.join("output/checkpoint-12")).arg(r.join("output/")).status().unwrap();
    assert!(copy.success());
    let mut args = base.to_vec();
    args.extend([
        "--save-strategy",
        "steps",
        "--save-steps",
        "12",
        "--logging-steps",
        "4",
        "--resume-from-checkpoint",
        "latest",
    ]);
    let run = host(r, &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(
        std::fs::read(d.join("output/model.safetensors")).unwrap()
            == std::fs::read(r.join("output/model.safetensors")).unwrap(),
        "resumed TorchScript weights differ"
    );
}
