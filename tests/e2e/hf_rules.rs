//! Rules where the host follows transformers (5.24) to the letter: which parameters get
//! weight decay, which learning rate a log entry shows, total_flos and the rounding of the
//! final metrics, and a flag given twice.

use crate::support::*;

/// The parameters the host's log line says get no weight decay.
fn exempt_from_decay(stderr: &str) -> Vec<String> {
    let line = stderr.lines().find(|l| l.contains("; not on: ")).unwrap_or_else(|| panic!("no decay line:\n{stderr}"));
    let list = line.split("; not on: ").nth(1).unwrap().trim();
    let mut names: Vec<String> = list.split(", ").filter(|n| *n != "none").map(str::to_owned).collect();
    names.sort();
    names
}

#[test]
fn weight_decay_leaves_out_layer_norms_by_type_as_transformers() {
    let dir = tempdir();
    // A TorchScript module whose LayerNorms have names the name rule alone misses (ln,
    // block.1), and transformers' own choice for the same module.
    let script = r#"
import json, sys, torch
from transformers import Trainer
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(64, 32)
        self.ln = torch.nn.LayerNorm(32)
        self.block = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32), torch.nn.GELU())
        self.final_norm = torch.nn.LayerNorm(32)
        self.head = torch.nn.Linear(32, 10)
    def forward(self, input):
        return self.head(self.final_norm(self.block(self.ln(self.proj(input)))))
net = Net()
torch.jit.script(net).save(sys.argv[1])
decayed = set(Trainer.get_decay_parameter_names(None, net))
print(json.dumps(sorted(n for n, _ in net.named_parameters() if n not in decayed)))
"#;
    let model = dir.path().join("model.pt");
    // torch.jit.script reads the class's source: a file, not `python -c`.
    let source = dir.path().join("make_model.py");
    std::fs::write(&source, script).unwrap();
    let output = std::process::Command::new(repo().join(".venv/bin/python"))
        .args([path_str(&source), path_str(&model)])
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("run the venv's python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let expected: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(expected.contains(&"ln.weight".to_owned()) && expected.contains(&"block.1.weight".to_owned()));
    let run = host(
        dir.path(),
        &["--model", "torchscript:model.pt", "--max-steps", "1", "--weight-decay", "0.5", "--optim", "sgd"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(exempt_from_decay(&run.stderr), expected, "transformers' get_decay_parameter_names");

    // The built-in transformer: every LayerNorm (ln1, ln2, ln_f) and every bias.
    let texts = dir.path().join("texts.safetensors");
    let generator = generator_lock();
    let ids = tch::Tensor::randint(50, [16, 8], (tch::Kind::Int64, tch::Device::Cpu));
    let labels = tch::Tensor::randint(2, [16], (tch::Kind::Int64, tch::Device::Cpu));
    drop(generator);
    tch::Tensor::write_safetensors(&[("input_ids", &ids), ("labels", &labels)], &texts).unwrap();
    let run = host(
        dir.path(),
        &[
            "--model",
            "transformer",
            "--train-file",
            "texts.safetensors",
            "--num-hidden-layers",
            "1",
            "--hidden-size",
            "16",
            "--max-steps",
            "1",
            "--weight-decay",
            "0.1",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let exempt = exempt_from_decay(&run.stderr);
    for norm in ["blocks.0.ln1.weight", "blocks.0.ln2.weight", "ln_f.weight", "ln_f.bias", "head.bias"] {
        assert!(exempt.contains(&norm.to_owned()), "{norm} is decayed: {exempt:?}");
    }
    assert!(!exempt.iter().any(|n| n.ends_with("qkv.weight") || n == "head.weight"), "{exempt:?}");
}

#[test]
fn logs_show_the_rate_each_step_used_and_the_final_metrics_as_transformers() {
    let dir = tempdir();
    let run = host(
        dir.path(),
        &["--learning-rate", "0.1", "--max-steps", "4", "--logging-steps", "1", "--eval-strategy", "no"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let history = log_history(dir.path());
    let rates: Vec<f64> =
        history.iter().filter(|e| e.get("loss").is_some()).map(|e| e["learning_rate"].as_f64().unwrap()).collect();
    // Linear decay over 4 steps: the rate of steps 1..4 (transformers >= 4.51), not the
    // next step's (0.075, 0.05, 0.025, 0.0 before).
    let expected = [0.1, 0.075, 0.05, 0.025];
    assert!(rates.len() == 4 && rates.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12), "{rates:?}");
    let last = history.last().unwrap();
    // A plain MLP counts no FLOPs (HF: a module without num_parameters), and the speed
    // metrics are rounded as speed_metrics rounds them.
    assert_eq!(last["total_flos"], 0.0, "{last}");
    let runtime = last["train_runtime"].as_f64().unwrap();
    assert_eq!((runtime * 1e4).round() / 1e4, runtime);
    let rate = last["train_samples_per_second"].as_f64().unwrap();
    assert_eq!((rate * 1e3).round() / 1e3, rate);
    // The saved weights carry the metadata transformers checks.
    let bytes = std::fs::read(dir.path().join("output/model.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(header.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
    let keys: Vec<&str> = last.as_object().unwrap().keys().map(String::as_str).collect();
    for key in ["train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"] {
        assert!(keys.contains(&key), "{keys:?}");
    }
}

#[test]
fn a_flag_given_twice_keeps_the_last_value_as_argparse() {
    let dir = tempdir();
    let run = host(dir.path(), &["--print-config", "--learning-rate", "0.1", "--learning_rate", "0.3", "--seed", "1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("learning_rate = 0.3"), "{}", run.stdout);
    let run = host(dir.path(), &["train", "--print-config", "--seed", "1", "--seed", "7"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("seed = 7"), "{}", run.stdout);
}
