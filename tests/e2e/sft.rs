//! Chat and prompt-completion data in TRL's formats, against TRL's SFTTrainer: the data it
//! prepares (chat template, assistant and completion masks, truncation) evaluated by
//! transformers gives the host's eval_loss on the same files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::*;

/// tests/pretrained/sft_oracle.py's model (with a chat template) and data, made once.
fn work() -> &'static Path {
    static WORK: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = WORK.get_or_init(|| {
        let dir = tempdir();
        let base = crate::pretrained::models().join("llama-causal/model");
        pretrained_oracle("sft_oracle.py", &["make", path_str(&base), path_str(dir.path())]);
        let path = dir.path().to_owned();
        (dir, path)
    });
    path
}

/// The host's eval_loss of `data` (one batch) with `flags`, and its stderr.
fn host_eval_loss(data: &Path, flags: &[&str]) -> (f64, String) {
    eval_loss_with(&work().join("model"), data, flags)
}

/// The eval_loss of `data` (one batch) on `model` with `flags`, and the host's stderr.
fn eval_loss_with(model: &Path, data: &Path, flags: &[&str]) -> (f64, String) {
    let dir = tempdir();
    let output = dir.path().join("out");
    let mut args = vec!["--model-name-or-path", path_str(model), "--train-file", path_str(data)];
    args.extend(["--eval-file", path_str(data), "--do-train", "false", "--do-eval", "true"]);
    args.extend(["--per-device-eval-batch-size", "64", "--output-dir", path_str(&output), "--device", "cpu"]);
    args.extend(flags);
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("eval_results.json")).unwrap()).unwrap();
    (results["eval_loss"].as_f64().unwrap(), run.stderr)
}

fn trl_eval_loss(data: &Path, assistant_only: bool, completion_only: bool, max_length: i64) -> f64 {
    let model = work().join("model");
    let flags = [assistant_only.to_string(), completion_only.to_string(), max_length.to_string()];
    let printed = pretrained_oracle(
        "sft_oracle.py",
        &["loss", path_str(&model), path_str(data), &flags[0], &flags[1], &flags[2]],
    );
    let report: serde_json::Value = serde_json::from_str(printed.trim().lines().last().unwrap()).unwrap();
    report["eval_loss"].as_f64().unwrap()
}

#[test]
fn chat_and_prompt_completion_data_evaluate_as_trl_prepares_them() {
    // (file, assistant_only_loss, completion_only_loss): every mask TRL builds.
    let cases = [
        ("chat.jsonl", false, true),
        ("chat.jsonl", true, true),
        ("pc_text.jsonl", false, true),
        ("pc_text.jsonl", false, false),
        ("pc_chat.jsonl", false, true),
        ("pc_chat.jsonl", true, true),
    ];
    let mut losses = Vec::new();
    for (file, assistant_only, completion_only) in cases {
        let data = work().join(file);
        let flags = ["--max-seq-length", "128", "--assistant-only-loss", if assistant_only { "true" } else { "false" }];
        let completion = ["--completion-only-loss", if completion_only { "true" } else { "false" }];
        let (mine, _) = host_eval_loss(&data, &[&flags[..], &completion[..]].concat());
        let theirs = trl_eval_loss(&data, assistant_only, completion_only, 128);
        assert!(
            (mine - theirs).abs() <= 1e-5 * theirs,
            "{file} assistant_only {assistant_only} completion_only {completion_only}: eval_loss {mine}, TRL {theirs}"
        );
        losses.push(mine);
    }
    // Without max_seq_length, TRL's max_length 1024: chats of over 128 tokens (the host's
    // default for other text) stay whole.
    let dir = tempdir();
    let data = dir.path().join("long_chats.jsonl");
    let long: String = std::fs::read_to_string(work().join("chat.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
            for message in row["messages"].as_array_mut().unwrap() {
                let content = message["content"].as_str().unwrap().to_owned();
                message["content"] = format!("{content} {content} {content} {content} {content}").into();
            }
            format!("{row}\n")
        })
        .collect();
    std::fs::write(&data, long).unwrap();
    let (at_128, cut) = host_eval_loss(&data, &["--max-seq-length", "128"]);
    assert!(cut.contains("cut to max_seq_length 128"), "{cut}");
    let (mine, stderr) = host_eval_loss(&data, &[]);
    assert!((mine - at_128).abs() > 1e-4, "the default cut as 128 does");
    let theirs = trl_eval_loss(&data, false, true, 1024);
    assert!((mine - theirs).abs() <= 1e-5 * theirs, "default max_seq_length: eval_loss {mine}, TRL {theirs}");
    assert!(!stderr.contains("cut to max_seq_length"), "{stderr}");
    // The masks matter: learning everything is another loss than the assistant's share.
    assert!((losses[0] - losses[1]).abs() > 1e-3, "{losses:?}");
    assert!((losses[2] - losses[3]).abs() > 1e-3, "{losses:?}");
}

#[test]
fn long_chats_are_cut_as_trl_cuts_them_and_said_so() {
    let data = work().join("chat.jsonl");
    // At 40 tokens five chats are cut, and two keep no assistant token: dropped, as TRL.
    let (mine, stderr) = host_eval_loss(&data, &["--max-seq-length", "40", "--assistant-only-loss"]);
    let theirs = trl_eval_loss(&data, true, true, 40);
    assert!((mine - theirs).abs() <= 1e-5 * theirs, "eval_loss {mine}, TRL {theirs}");
    assert!(stderr.contains("5 of 6 examples cut to max_seq_length 40 tokens"), "{stderr}");
    assert!(stderr.contains("2 examples dropped: nothing left to learn"), "{stderr}");
}

#[test]
fn chat_data_without_a_usable_template_is_refused_by_name() {
    let dir = tempdir();
    let chat = work().join("chat.jsonl");
    // The base folder has no chat template.
    let base = crate::pretrained::models().join("llama-causal/model");
    let run = host(
        dir.path(),
        &["--model-name-or-path", path_str(&base), "--train-file", path_str(&chat), "--output-dir", "out"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("chat data needs a chat template") && run.stderr.contains("tokenizer_config.json"),
        "{}",
        run.stderr
    );
    // A template without generation blocks cannot say which tokens are the assistant's.
    let folder = dir.path().join("model");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(work().join("model")).unwrap().flatten() {
        std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    let plain = std::fs::read_to_string(folder.join("chat_template.jinja")).unwrap();
    let plain = plain.replace("{% generation %}", "").replace("{% endgeneration %}", "");
    std::fs::write(folder.join("chat_template.jinja"), plain).unwrap();
    let args = ["--model-name-or-path", path_str(&folder), "--train-file", path_str(&chat), "--output-dir", "out"];
    let run = host(dir.path(), &[&args[..], &["--assistant-only-loss"]].concat());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("{% generation %}") && run.stderr.contains("chat_template.jinja"), "{}", run.stderr);
    // Without assistant_only_loss the same template trains on every token.
    let run = host(dir.path(), &[&args[..], &["--max-steps", "2", "--save-strategy", "no"]].concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Prompt-completion text has no assistant turns.
    let text = work().join("pc_text.jsonl");
    let args = ["--model-name-or-path", path_str(&folder), "--train-file", path_str(&text), "--assistant-only-loss"];
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("assistant_only_loss needs chat data (messages)"), "{}", run.stderr);
}

/// The host's eval_loss of `data` on pretrained test model `name`, and its stderr.
fn eval_loss_of(name: &str, data: &Path, flags: &[&str]) -> (f64, String) {
    eval_loss_with(&crate::pretrained::models().join(name).join("model"), data, flags)
}

#[test]
fn packed_rows_give_the_loss_of_their_examples_apart() {
    // Rotary, windowed, soft-capped, partially rotary and learned positions: each keeps
    // the packed examples apart (a block-diagonal mask, positions restarting).
    let text = crate::pretrained::models().join("text_eval.jsonl");
    let cases = [
        "llama-causal",
        "mistral-window-causal",
        "qwen3-causal",
        "gemma2-causal",
        "gemma3-causal",
        "phi3-causal",
        "gpt2-causal",
        "opt-causal",
        "opt-postnorm-causal",
    ];
    for name in cases {
        let (apart, _) = eval_loss_of(name, &text, &["--max-seq-length", "64"]);
        let (packed, stderr) = eval_loss_of(name, &text, &["--max-seq-length", "64", "--packing"]);
        assert!((apart - packed).abs() <= 1e-5 * apart, "{name}: eval_loss {apart} apart, {packed} packed");
        let line = stderr.lines().find(|l| l.contains("examples packed into")).unwrap_or_else(|| panic!("{stderr}"));
        let counts: Vec<usize> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        assert!(counts[1] < counts[0], "{name}: {line}");
    }
    // Chat data, with the assistant's tokens only.
    let chat = work().join("chat.jsonl");
    let flags = ["--max-seq-length", "128", "--assistant-only-loss"];
    let (apart, _) = host_eval_loss(&chat, &flags);
    let (packed, _) = host_eval_loss(&chat, &[&flags[..], &["--packing"]].concat());
    assert!((apart - packed).abs() <= 1e-5 * apart, "chat: eval_loss {apart} apart, {packed} packed");
}

#[test]
fn packing_is_refused_where_examples_would_mix() {
    let dir = tempdir();
    let models = crate::pretrained::models();
    let tokenizer = models.join("llama-causal/model/tokenizer.json");
    let text = models.join("text_train.jsonl");
    let args = ["--model", "gpt", "--train-file", path_str(&text), "--tokenizer-file", path_str(&tokenizer)];
    host(dir.path(), &[&args[..], &["--packing", "--max-steps", "1"]].concat())
        .assert_clean_error(2, "packing needs a model that keeps the packed examples apart (a pretrained causal LM: ");
    let labeled = models.join("labeled_train.jsonl");
    let model = models.join("llama-classifier/model");
    let args = ["--model-name-or-path", path_str(&model), "--train-file", path_str(&labeled), "--packing"];
    host(dir.path(), &args)
        .assert_clean_error(2, "packing is for language-modelling data, and these texts have labels");
}

/// `host generate --json` with `flags` on `model`: its prompt and generated ids.
fn host_generate(model: &Path, flags: &[&str]) -> (Vec<i64>, Vec<i64>, String) {
    let dir = tempdir();
    let args = [&["generate", "--model", path_str(model), "--json", "--device", "cpu"][..], flags].concat();
    let run = host(dir.path(), &args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    let line: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let ids = |key: &str| line[key].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    (ids("prompt_ids"), ids("generated_ids"), run.stderr)
}

#[test]
fn sampled_generation_draws_transformers_tokens_for_a_seed() {
    let models = crate::pretrained::models();
    for name in ["llama-causal", "gpt2-causal"] {
        let model = models.join(name).join("model");
        for (seed, temperature, top_k, top_p) in [("7", "0.7", "50", "1.0"), ("11", "1.3", "8", "0.9")] {
            let flags = ["--prompt", "the cat", "--do-sample", "--seed", seed, "--max-new-tokens", "12"];
            let settings = ["--temperature", temperature, "--top-k", top_k, "--top-p", top_p];
            let (prompt, mine, _) = host_generate(&model, &[&flags[..], &settings[..]].concat());
            let prompt: Vec<String> = prompt.iter().map(i64::to_string).collect();
            let printed = pretrained_oracle(
                "generate_oracle.py",
                &["sample", path_str(&model), &prompt.join(","), seed, temperature, top_k, top_p, "12"],
            );
            let theirs: serde_json::Value = serde_json::from_str(printed.trim().lines().last().unwrap()).unwrap();
            let theirs: Vec<i64> =
                theirs["generated_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(mine, theirs, "{name} seed {seed}: host samples {mine:?}, transformers {theirs:?}");
        }
        // Another seed, other tokens; greedy is the argmax.
        let (_, a, _) = host_generate(&model, &["--prompt", "the cat", "--do-sample", "--seed", "1", "--top-k", "0"]);
        let (_, b, _) = host_generate(&model, &["--prompt", "the cat", "--do-sample", "--seed", "2", "--top-k", "0"]);
        assert_ne!(a, b, "{name}: two seeds drew the same 20 tokens");
    }
}

#[test]
fn chat_prompts_stop_strings_and_the_context_bound_generation() {
    let model = work().join("model");
    // --chat renders the message as transformers' apply_chat_template does.
    let (prompt, _, _) = host_generate(&model, &["--prompt", "hello world", "--chat", "--max-new-tokens", "2"]);
    let printed = pretrained_oracle("generate_oracle.py", &["chat", path_str(&model), "hello world"]);
    let theirs: serde_json::Value = serde_json::from_str(printed.trim().lines().last().unwrap()).unwrap();
    let theirs: Vec<i64> = theirs["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(prompt, theirs);
    // A stop string ends the completion at the token that completes it.
    let (_, free, _) = host_generate(&model, &["--prompt", "the cat", "--max-new-tokens", "12"]);
    assert!(free.len() > 3, "{free:?}");
    let tokenizer = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let ids: Vec<u32> = free[..3].iter().map(|&t| t as u32).collect();
    let third = tokenizer.decode(&ids, false).unwrap();
    let stop = third.trim_start().chars().rev().take(2).collect::<String>().chars().rev().collect::<String>();
    let (_, stopped, _) = host_generate(&model, &["--prompt", "the cat", "--max-new-tokens", "12", "--stop", &stop]);
    assert!(stopped.len() <= 3 && free.starts_with(&stopped), "stop {stop:?}: {stopped:?} of {free:?}");
    // Far more tokens than the context holds: capped, with a word, not run on.
    let gpt2 = crate::pretrained::models().join("gpt2-causal/model");
    let (prompt, generated, stderr) = host_generate(&gpt2, &["--prompt", "the cat", "--max-new-tokens", "1000000000"]);
    assert!(prompt.len() + generated.len() <= 64, "{}", generated.len());
    assert!(stderr.contains("max_new_tokens 1000000000: the model's context is 64 tokens"), "{stderr}");
    // Sampling settings out of range, negative ones included, are named.
    let dir = tempdir();
    let base = ["generate", "--model", path_str(&gpt2), "--prompt", "the cat", "--device", "cpu", "--do-sample"];
    for (flag, value, expected) in [
        ("--top-k", "-3", "top_k must be 0 (off) or a positive number of tokens (got -3)"),
        ("--temperature", "0", "temperature must be a positive number (got 0)"),
        ("--top-p", "1.5", "top_p must be in (0, 1] (got 1.5)"),
    ] {
        host(dir.path(), &[&base[..], &[flag, value]].concat()).assert_clean_error(2, expected);
    }
}

#[test]
fn an_adapter_folder_generates_as_its_merged_model() {
    let dir = tempdir();
    let models = crate::pretrained::models();
    let (model, text) = (models.join("llama-causal/model"), models.join("text_train.jsonl"));
    let output = dir.path().join("out");
    let args =
        ["--model-name-or-path", path_str(&model), "--train-file", path_str(&text), "--use-peft", "--merge-lora"];
    let train =
        ["--max-steps", "3", "--learning-rate", "0.05", "--eval-strategy", "no", "--output-dir", path_str(&output)];
    let run = host(dir.path(), &[&args[..], &train[..]].concat());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let flags = ["--prompt", "the cat", "--max-new-tokens", "10"];
    let (_, adapter, _) = host_generate(&output, &flags);
    let (_, merged, _) = host_generate(&output.join("merged"), &flags);
    let (_, base, _) = host_generate(&model, &flags);
    assert_eq!(adapter, merged, "the adapter folder generates as its merged model");
    assert_ne!(adapter, base, "the adapters changed nothing: the test cannot tell them apart");
}
