//! LoRA adapters in PEFT's format and gradient checkpointing, with PEFT as the oracle:
//! tests/pretrained/peft_oracle.py makes tiny random models and PEFT adapters on them
//! (nothing downloaded) and the reference training; the host continues PEFT's adapters,
//! and PEFT loads what the host wrote.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::{host, path_str, Run};

/// The models, adapters and references, made once for the tests here (they only read them).
fn work() -> &'static Path {
    static WORK: OnceLock<PathBuf> = OnceLock::new();
    WORK.get_or_init(|| crate::support::make_pretrained_oracle("peft_oracle.py", "peft-oracle"))
}

/// Runs tests/pretrained/peft_oracle.py; its report is the failure message.
fn oracle(args: &[&str]) -> String {
    crate::support::pretrained_oracle("peft_oracle.py", args)
}

/// Full-batch steps as the reference takes them; `extra` flags replace these or add to them.
fn train(model: &Path, data: &str, output: &Path, extra: &[&str]) -> Run {
    let work = work();
    let (train, eval) = (work.join(format!("{data}_train.jsonl")), work.join(format!("{data}_eval.jsonl")));
    crate::support::fine_tune(work, model, &train, &eval, output, extra)
}

#[test]
fn peft_adapters_train_load_and_merge_as_peft_does() {
    let work = work();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(work.join("cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 9);
    for case in &cases {
        let (name, data) = (case["name"].as_str().unwrap(), case["data"].as_str().unwrap());
        let dir = work.join(name);
        let output = dir.join("host/output");
        // PEFT's adapter, continued: the adapter folder brings its base and settings.
        let run = train(&dir.join("init"), data, &output, &["--merge-lora"]);
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let checkpoint = output.join("checkpoint-5");
        assert!(checkpoint.join("adapter_model.safetensors").is_file(), "{name}: no adapter in checkpoint-5");
        assert!(!checkpoint.join("model.safetensors").exists(), "{name}: a LoRA checkpoint holds the base model");
        let predictions = dir.join("host/predictions.safetensors");
        let predict =
            host(work, &["predict", "--checkpoint", path_str(&checkpoint), "--output", path_str(&predictions)]);
        assert_eq!(predict.code, 0, "{name}: predict: {}", predict.stderr);
        // The host's own new adapter on the base, nothing learned (learning rate 0).
        let targets = case["targets"].as_str().unwrap();
        let fresh = [
            "--use-peft",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--lora-target-modules",
            targets,
            "--learning-rate",
            "0",
            "--max-steps",
            "1",
        ];
        let run = train(&dir.join("base"), data, &dir.join("host/fresh"), &fresh);
        assert_eq!(run.code, 0, "{name}: fresh adapter: {}", run.stderr);
    }
    println!("{}", oracle(&["check", path_str(work)]));
}

/// The tensors of a safetensors file, by name, as bytes.
fn tensor_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>)> =
        file.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect();
    tensors.sort();
    tensors
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum()
}

#[test]
fn a_lora_checkpoint_is_small_and_resumes_exactly() {
    let work = work();
    let base = work.join("llama-causal/base");
    let out = tempfile::tempdir().unwrap();
    let lora = ["--use-peft", "--lora-target-modules", "all-linear", "--lora-dropout", "0.1", "--save-steps", "2"];
    let full = train(&base, "text", &out.path().join("full"), &[&lora[..], &["--max-steps", "4"]].concat());
    assert_eq!(full.code, 0, "{}", full.stderr);
    let checkpoint = out.path().join("full/checkpoint-2");
    // The checkpoint holds the adapter and its optimizer state, not the frozen base.
    let adapter = folder_bytes(&checkpoint);
    let model = std::fs::metadata(base.join("model.safetensors")).unwrap().len();
    assert!(!checkpoint.join("model.safetensors").exists());
    let optimizer = tensor_bytes(&checkpoint.join("optimizer.safetensors"));
    assert!(optimizer.iter().all(|(name, _)| name.contains("lora_")), "optimizer state of frozen weights");
    assert!(adapter < model, "checkpoint {adapter} bytes, the base model {model}");
    // Resumed from checkpoint-2, the run ends bitwise where the unbroken one did (dropout
    // on the adapters' inputs included).
    let resumed_dir = out.path().join("resumed");
    std::fs::create_dir_all(&resumed_dir).unwrap();
    let copy = resumed_dir.join("checkpoint-2");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&checkpoint).unwrap().flatten() {
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    // Without --use-peft the checkpoint is named for what it holds.
    let plain = train(&base, "text", &resumed_dir, &["--max-steps", "4", "--resume-from-checkpoint", "latest"]);
    plain.assert_clean_error(
        2,
        "holds a LoRA adapter (adapter_model.safetensors), not a whole model: continue it with --use-peft",
    );
    let extra = [&lora[..], &["--max-steps", "4", "--resume-from-checkpoint", "latest"]].concat();
    let resumed = train(&base, "text", &resumed_dir, &extra);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let name = "adapter_model.safetensors";
    assert_eq!(tensor_bytes(&out.path().join("full").join(name)), tensor_bytes(&resumed_dir.join(name)));
}

/// The logged losses and gradient norms of a run.
fn history(output: &Path) -> Vec<(f64, f64)> {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("trainer_state.json")).unwrap()).unwrap();
    let entries = state["log_history"].as_array().unwrap();
    entries.iter().filter_map(|e| Some((e["loss"].as_f64()?, e["grad_norm"].as_f64()?))).collect()
}

fn largest_difference(a: &Path, b: &Path) -> f64 {
    let read = |path: &Path| {
        let mut tensors = tch::Tensor::read_safetensors(path).unwrap();
        tensors.sort_by(|x, y| x.0.cmp(&y.0));
        tensors
    };
    let (a, b) = (read(a), read(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn gradient_checkpointing_gives_the_gradients_of_the_plain_pass() {
    let work = work();
    let out = tempfile::tempdir().unwrap();
    // LoRA on a decoder with dropout on the adapters (replayed in the recomputation); full
    // fine-tuning of an encoder, and of GPT-2, whose tied embedding gets its gradient in
    // two parts (the head's, then the recomputed blocks').
    let cases: [(&str, &str, &[&str], &str); 3] = [
        (
            "llama-causal",
            "text",
            &["--use-peft", "--lora-target-modules", "all-linear", "--lora-dropout", "0.2"],
            "adapter_model.safetensors",
        ),
        ("bert-classifier", "labeled", &[], "model.safetensors"),
        ("gpt2-causal", "text", &[], "model.safetensors"),
    ];
    for (name, data, extra, weights) in cases {
        let base = work.join(name).join("base");
        let plain = out.path().join(format!("{name}-plain"));
        let recomputed = out.path().join(format!("{name}-checkpointing"));
        // SGD: the weights move by lr x gradient, so they keep the gradients' agreement.
        // Adam divides by the gradient's own size, which turns a 1e-9 difference in a
        // near-zero gradient element into a full step (2e-5 seen on a busy machine).
        let steps = ["--max-steps", "3", "--optim", "sgd"];
        let run = train(&base, data, &plain, &[extra, &steps[..]].concat());
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let run = train(&base, data, &recomputed, &[extra, &steps[..], &["--gradient-checkpointing"]].concat());
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let (a, b) = (history(&plain), history(&recomputed));
        assert_eq!(a.len(), 3, "{name}");
        for ((loss_a, norm_a), (loss_b, norm_b)) in a.iter().zip(&b) {
            // The checkpointed forward pass runs the blocks without autograd, where libtorch
            // may pick other kernels (attention): the loss it reports can differ in the last
            // float32 digits (2.6e-6 relative seen once on a busy machine). The gradients
            // come from the recomputation with autograd, and are held to 1e-6.
            assert!((loss_a - loss_b).abs() <= 1e-5 * loss_a.abs().max(1.0), "{name}: losses {a:?} and {b:?}");
            assert!((norm_a - norm_b).abs() <= 1e-6 * norm_a.max(1.0), "{name}: gradient norms {a:?} and {b:?}");
        }
        let difference = largest_difference(&plain.join(weights), &recomputed.join(weights));
        assert!(difference <= 1e-6, "{name}: trained weights differ by {difference:e}");
    }
}

#[test]
fn lora_mistakes_are_one_line_errors() {
    let work = work();
    let out = tempfile::tempdir().unwrap();
    let base = work.join("llama-causal/base");
    let check = |model: &Path, extra: &[&str], expected: &str| {
        let run = train(model, "text", &out.path().join("run"), extra);
        assert_eq!(run.code, 2, "{extra:?}: {}", run.stderr);
        let line = run.stderr.lines().find(|l| l.contains("error")).unwrap_or_default().to_owned();
        assert!(line.contains(expected), "{extra:?}: {line}\n{}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    };
    check(
        &base,
        &["--use-peft", "--lora-target-modules", "q_proj,query"],
        "lora_target_modules query match no linear layer of the model; its linear layers are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj (or all-linear)",
    );
    check(
        &base,
        &["--lora-r", "8", "--lora-target-modules", "q_proj"],
        "lora_target_modules is a LoRA setting, but use_peft is off",
    );
    check(&base, &["--use-peft", "--lora-r", "0"], "lora_r must be at least 1 (got 0)");
    check(
        &base,
        &["--use-peft", "--lora-modules-to-save", "nosuch"],
        "lora_modules_to_save nosuch matches no module of the model",
    );
    // An adapter whose base is gone, and one whose config does not match its tensors.
    let adapter = out.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let init = work.join("llama-causal/init");
    std::fs::copy(init.join("adapter_model.safetensors"), adapter.join("adapter_model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(init.join("adapter_config.json")).unwrap()).unwrap();
    config["base_model_name_or_path"] = "org/some-model".into();
    std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    check(&adapter, &[], "its base model org/some-model is not a local folder: download it");
    config["base_model_name_or_path"] = path_str(&base).into();
    config["r"] = 8.into();
    std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    check(&adapter, &[], "does not fit this model and LoRA settings");
    config["r"] = 4.into();
    config["use_dora"] = true.into();
    std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    check(&adapter, &[], "use_dora is set, which this host does not implement");
}

#[test]
fn an_adapter_on_the_head_trains_alike_through_the_hidden_states_and_the_full_logits() {
    // The built-in loss takes the hidden states with the head ([x, A(x)] times [W, B]) and
    // never makes the full logits; weighted_ce without weights is the same loss over the
    // full logits. SGD, so rounding differences stay as small as they are.
    let work = work();
    let model = work.join("llama-causal/base");
    let base = [
        "--use-peft",
        "--lora-r",
        "4",
        "--lora-target-modules",
        "q_proj,lm_head",
        "--optim",
        "sgd",
        "--learning-rate",
        "0.5",
        "--max-steps",
        "3",
    ];
    let dir = crate::support::tempdir();
    let fused = train(&model, "text", &dir.path().join("fused"), &base);
    assert_eq!(fused.code, 0, "{}", fused.stderr);
    let weighted_ce = crate::support::plugin("weighted_ce");
    let full =
        train(&model, "text", &dir.path().join("full"), &[&base[..], &["--plugin", path_str(&weighted_ce)]].concat());
    assert_eq!(full.code, 0, "{}", full.stderr);
    let (a, b) = (history(&dir.path().join("fused")), history(&dir.path().join("full")));
    assert_eq!(a.len(), 3);
    for ((loss_a, norm_a), (loss_b, norm_b)) in a.iter().zip(&b) {
        assert!((loss_a - loss_b).abs() <= 1e-5 * loss_b.abs(), "losses {a:?} vs {b:?}");
        assert!((norm_a - norm_b).abs() <= 1e-4 * norm_b.abs(), "gradient norms {a:?} vs {b:?}");
    }
    let adapter = |out: &str| dir.path().join(out).join("adapter_model.safetensors");
    let difference = largest_difference(&adapter("fused"), &adapter("full"));
    assert!(difference < 1e-5, "trained adapters differ by {difference}");
    let names: Vec<String> =
        tch::Tensor::read_safetensors(adapter("fused")).unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n.contains("lm_head.lora_B")), "the head has an adapter: {names:?}");
    // A plugin loss that takes the hidden states (it refuses logits in training) gets the
    // same head input and, with plugin-api's linear cross entropy, the same run.
    let fixtures = crate::support::plugin("test_fixtures");
    let plugin = ["--plugin", path_str(&fixtures), "--loss", "hidden_states_ce", "--callback", "noop"];
    let hidden = train(&model, "text", &dir.path().join("hidden"), &[&base[..], &plugin].concat());
    assert_eq!(hidden.code, 0, "{}", hidden.stderr);
    assert_eq!(history(&dir.path().join("hidden")), a, "the plugin's run differs from the built-in loss's");
    assert_eq!(largest_difference(&adapter("hidden"), &adapter("fused")), 0.0);
}
