//! Pretrained Hugging Face models, with transformers as the oracle: tiny random models of
//! every architecture and head are made by transformers itself (tests/pretrained/hf_oracle.py,
//! nothing downloaded), fine-tuned by the host, and compared with transformers' Trainer on
//! the same steps, the saved folders loaded back by `from_pretrained`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::{host, path_str, repo, Run};

/// The models and references, made once for all the tests here (they only read them).
pub(crate) fn models() -> &'static Path {
    static MODELS: OnceLock<PathBuf> = OnceLock::new();
    MODELS.get_or_init(|| crate::support::make_pretrained_oracle("hf_oracle.py", "pretrained-oracle"))
}

/// Runs tests/pretrained/hf_oracle.py; its report is the failure message.
fn oracle(args: &[&str]) -> String {
    crate::support::pretrained_oracle("hf_oracle.py", args)
}

/// The fine-tuning every case runs: full-batch steps, AdamW with weight decay, clipping;
/// `extra` flags replace these or add to them.
fn fine_tune(dir: &Path, model: &Path, data: &str, output: &Path, extra: &[&str]) -> Run {
    let models = models();
    let (train, eval) = (models.join(format!("{data}_train.jsonl")), models.join(format!("{data}_eval.jsonl")));
    crate::support::fine_tune(dir, model, &train, &eval, output, extra)
}

#[test]
fn every_architecture_and_head_trains_saves_and_generates_as_transformers() {
    let models = models();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(models.join("cases.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 24, "every architecture with its heads");
    for case in &cases {
        let (name, data) = (case["name"].as_str().unwrap(), case["data"].as_str().unwrap());
        let work = models.join(name).join("host");
        let output = work.join("output");
        // Some cases train with HF's label smoother, as their reference did.
        let smoothing = case["smoothing"].as_f64().unwrap_or(0.0).to_string();
        let extra = if smoothing != "0" { vec!["--label-smoothing-factor", smoothing.as_str()] } else { vec![] };
        let run = fine_tune(models, &models.join(name).join("model"), data, &output, &extra);
        assert_eq!(run.code, 0, "{name}: stderr:\n{}", run.stderr);
        let checkpoint = output.join("checkpoint-5");
        for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            assert!(checkpoint.join(file).is_file(), "{name}: checkpoint-5 lacks {file}");
        }
        let predictions = work.join("predictions.safetensors");
        let predict =
            host(models, &["predict", "--checkpoint", path_str(&checkpoint), "--output", path_str(&predictions)]);
        assert_eq!(predict.code, 0, "{name}: predict: {}", predict.stderr);
        if data == "text" {
            let args = ["generate", "--model", path_str(&output), "--prompt", "the cat", "--max-new-tokens", "8"];
            let generate = host(models, &[&args[..], &["--json"]].concat());
            assert_eq!(generate.code, 0, "{name}: generate: {}", generate.stderr);
            std::fs::write(work.join("generated.json"), &generate.stdout).unwrap();
        }
    }
    // Losses, trained weights, loading, logits and generations against transformers.
    let report = oracle(&["check", path_str(models)]);
    println!("{report}");
}

/// A copy of `from` at `to`, without the files named in `leave_out`.
fn copy_folder(from: &Path, to: &Path, leave_out: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !leave_out.contains(&name.as_str()) && entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// Edits config.json of the folder `dir`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

#[test]
fn bad_model_folders_are_one_line_errors() {
    let models = models();
    let dir = crate::support::tempdir();
    let folder = |name: &str, from: &str, leave_out: &[&str]| {
        let path = dir.path().join(name);
        copy_folder(&models.join(from).join("model"), &path, leave_out);
        path
    };
    let no_config = folder("no_config", "llama-classifier", &["config.json"]);
    let no_weights = folder("no_weights", "llama-classifier", &["model.safetensors"]);
    let no_tokenizer = folder("no_tokenizer", "llama-classifier", &["tokenizer.json"]);
    let t5 = folder("t5", "llama-classifier", &[]);
    edit_config(&t5, |c| drop(c.insert("model_type".into(), "t5".into())));
    let narrower = folder("narrower", "llama-classifier", &[]);
    edit_config(&narrower, |c| drop(c.insert("intermediate_size".into(), 96.into())));
    let deeper = folder("deeper", "llama-classifier", &[]);
    edit_config(&deeper, |c| drop(c.insert("num_hidden_layers".into(), 3.into())));
    // Absurd but legal sizes: refused from the weights' headers, nothing allocated first.
    let abyss = folder("abyss", "llama-classifier", &[]);
    edit_config(&abyss, |c| drop(c.insert("num_hidden_layers".into(), 100_000.into())));
    let vast = folder("vast", "llama-classifier", &[]);
    edit_config(&vast, |c| drop(c.insert("hidden_size".into(), 4_000_000.into())));
    let bad_tokenizer_config = folder("bad_tokenizer_config", "llama-classifier", &[]);
    std::fs::write(bad_tokenizer_config.join("tokenizer_config.json"), "{ not json").unwrap();
    let small_vocab = folder("small_vocab", "llama-classifier", &[]);
    edit_config(&small_vocab, |c| drop(c.insert("vocab_size".into(), 200.into())));
    let window = folder("window", "mistral-causal", &[]);
    edit_config(&window, |c| drop(c.insert("sliding_window".into(), 0.into())));
    // Once a panic (a division by zero heads).
    let no_kv_heads = folder("no_kv_heads", "llama-causal", &[]);
    edit_config(&no_kv_heads, |c| drop(c.insert("num_key_value_heads".into(), 0.into())));
    let yarn = folder("yarn", "llama-causal", &[]);
    edit_config(&yarn, |c| {
        c.insert("rope_parameters".into(), serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}));
    });
    let partial = folder("partial", "llama-causal", &[]);
    edit_config(&partial, |c| {
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
        );
    });
    let longrope = folder("longrope", "phi3-causal", &[]);
    edit_config(&longrope, |c| {
        let factors: Vec<f64> = vec![1.0; 4];
        c.insert("rope_parameters".into(), serde_json::json!({"rope_type": "longrope", "rope_theta": 1e4, "short_factor": factors, "long_factor": factors}));
    });
    let phi3 = models.join("phi3-causal/model");
    // A sharded folder (the host's own output) with one shard gone.
    let sharded = dir.path().join("sharded");
    let run = fine_tune(
        dir.path(),
        &models.join("llama-classifier/model"),
        "labeled",
        &sharded,
        &["--max-steps", "1", "--save-strategy", "no", "--save-max-shard-size", "100KB"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut shards: Vec<&str> = index["weight_map"].as_object().unwrap().values().filter_map(|v| v.as_str()).collect();
    shards.sort_unstable();
    shards.dedup();
    assert!(shards.len() >= 3, "{shards:?}");
    let gone = shards[1].to_owned();
    std::fs::remove_file(sharded.join(&gone)).unwrap();
    let bert = models.join("bert-classifier/model");
    let classifier = models.join("llama-classifier/model");
    let labeled = models.join("labeled_train.jsonl");
    let text = models.join("text_train.jsonl");
    let out_of_range = dir.path().join("five.jsonl");
    let rows: Vec<String> =
        (0..10).map(|i| format!("{{\"text\": \"the cat {i}\", \"label\": {}}}", i % 3 + 3 * (i / 9))).collect();
    std::fs::write(&out_of_range, rows.join("\n")).unwrap();
    let empty_texts = dir.path().join("empty.jsonl");
    std::fs::write(&empty_texts, "{\"text\": \"\"}\n{\"text\": \"\"}\n").unwrap();
    let causal = models.join("llama-causal/model");
    let negative = dir.path().join("negative.safetensors");
    let ids = tch::Tensor::arange(40, (tch::Kind::Int64, tch::Device::Cpu)).view([10, 4]) - 5;
    tch::Tensor::write_safetensors(&[("input_ids", &ids)], &negative).unwrap();
    let show = |p: &Path| p.display().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        // A causal LM with nothing to predict is said so, not taken for a classifier.
        (vec![show(&causal), "--train-file".into(), show(&text), "--max-seq-length".into(), "1".into()], "no token is left to predict: every text is at most one token long (max_seq_length 1)".into()),
        (vec![show(&causal), "--train-file".into(), show(&empty_texts)], "no token is left to predict".into()),
        (vec![show(&causal), "--train-file".into(), show(&negative)], "token id -5 is negative: token ids are rows of the embedding (0 to 319)".into()),
        (vec![show(&no_config)], format!("model_name_or_path {} has no config.json: it is not a Hugging Face model folder", show(&no_config))),
        (vec![show(&no_weights)], format!("model_name_or_path {} has no weights: neither model.safetensors nor model.safetensors.index.json", show(&no_weights))),
        (vec![show(&sharded)], format!("model_name_or_path {}: shard {gone}, listed in model.safetensors.index.json, is missing; download or copy the whole folder", show(&sharded))),
        (vec![show(&t5)], "config.json: model_type 't5' is not supported; this host implements llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3, gpt2, opt, bert, roberta".into()),
        (vec![show(&narrower)], "the weights do not match config.json: model.layers.0.mlp.gate_proj.weight is [128, 64] in the checkpoint, [96, 64] by config.json".into()),
        (vec![show(&deeper)], "the weights do not match config.json: config.json asks for 3 layers, the checkpoint's last is layer 1 (missing model.layers.2.".into()),
        (vec![show(&abyss)], "the weights do not match config.json: config.json asks for 100000 layers, the checkpoint's last is layer 1 (missing model.layers.2.".into()),
        (vec![show(&vast)], "the weights do not match config.json: model.layers.0.input_layernorm.weight is [64] in the checkpoint, [4000000] by config.json".into()),
        (vec![show(&bad_tokenizer_config)], "tokenizer_config.json is not valid JSON".into()),
        (vec![show(&no_tokenizer)], format!("tokenizer_file {}/tokenizer.json does not exist", show(&no_tokenizer))),
        (vec![show(&small_vocab)], "config.json's vocab_size 200 does not match the weights: model.embed_tokens.weight has 320 rows".into()),
        (vec!["meta-llama/Llama-3.2-1B".into()], "model_name_or_path 'meta-llama/Llama-3.2-1B' is not a local folder, and this host does not download models: download it first (hf download meta-llama/Llama-3.2-1B --local-dir models/Llama-3.2-1B)".into()),
        (vec![show(&window), "--train-file".into(), show(&text)], "sliding_window 0 must be at least 1 (or null for none)".into()),
        (vec![show(&no_kv_heads), "--train-file".into(), show(&text)], "num_key_value_heads 0 must be at least 1".into()),
        (vec![show(&yarn), "--train-file".into(), show(&text)], "rope_parameters.rope_type 'yarn' is not supported (this host implements default, linear, llama3 and longrope)".into()),
        (vec![show(&bert), "--train-file".into(), show(&text)], "a sequence classifier learns from one label per text, and causal language modelling needs a decoder (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3, gpt2, opt)".into()),
        (vec![show(&partial), "--train-file".into(), show(&text)], "partial_rotary_factor 0.5 is not supported (of this model_type; phi3 has it)".into()),
        (vec![show(&longrope), "--train-file".into(), show(&text)], "rope_parameters.short_factor of 4 entries needs 8, one per rotated pair of dimensions".into()),
        (vec![show(&phi3), "--train-file".into(), show(&text), "--use-peft".into()], "lora_target_modules: PEFT has no default LoRA targets for model_type 'phi3'; name them".into()),
        (vec![show(&classifier), "--num-labels".into(), "5".into()], "num_labels 5 does not match the classification head of model_name_or_path".into()),
        (vec![show(&classifier), "--train-file".into(), show(&out_of_range)], "label 3 (item".into()),
        (vec![show(&classifier), "--torch-dtype".into(), "int8".into()], "torch_dtype 'int8' is not one of: auto (config.json's), float32, bfloat16, float16".into()),
        (vec![show(&classifier), "--model".into(), "gpt".into()], "model gpt and model_name_or_path".into()),
        (vec![show(&classifier), "--hidden-size".into(), "128".into()], "hidden_size and model_name_or_path".into()),
    ];
    for (case, expected) in cases {
        let mut args = vec!["--model-name-or-path", &case[0], "--max-steps", "1", "--max-seq-length", "32"];
        let rest: Vec<&str> = case[1..].iter().map(String::as_str).collect();
        if !rest.contains(&"--train-file") {
            args.extend(["--train-file", path_str(&labeled)]);
        }
        args.extend(rest);
        host(dir.path(), &args).assert_clean_error(2, &expected);
    }
}

/// `from` (JSONL with class ids) with each label replaced by `names[id]`.
fn with_label_names(from: &Path, to: &Path, names: &[&str]) {
    let rows: Vec<String> = std::fs::read_to_string(from)
        .unwrap()
        .lines()
        .map(|line| {
            let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
            row["label"] = names[row["label"].as_i64().unwrap() as usize].into();
            row.to_string()
        })
        .collect();
    std::fs::write(to, rows.join("\n")).unwrap();
}

/// Writes `datasets`' own forms of the labeled texts: save_to_disk folders with a
/// ClassLabel (names in ClassLabel's order, not sorted), a DatasetDict, and an Arrow
/// stream file and a Parquet file with the labels as names.
const DATASETS_FORMS: &str = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
src, out, names = sys.argv[1], sys.argv[2], ["pos", "neg", "mid"]
features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
def rows(split):
    return [json.loads(l) for l in open(f"{src}/labeled_{split}.jsonl") if l.strip()]
sets = {s: Dataset.from_list(rows(s), features=features) for s in ["train", "eval"]}
for split, ds in sets.items():
    ds.save_to_disk(f"{out}/{split}_folder")
DatasetDict({"train": sets["train"], "test": sets["eval"]}).save_to_disk(f"{out}/dict")
named = pa.table({"text": [r["text"] for r in rows("train")], "label": [names[r["label"]] for r in rows("train")]})
with pa.ipc.new_stream(f"{out}/named.arrow", named.schema) as writer:
    writer.write_table(named)
pq.write_table(named, f"{out}/named.parquet")
"#;

#[test]
fn datasets_folders_and_arrow_files_train_as_the_same_texts_in_json_lines() {
    let models = models();
    let dir = crate::support::tempdir();
    let d = dir.path();
    let script = d.join("forms.py");
    std::fs::write(&script, DATASETS_FORMS).unwrap();
    let made = std::process::Command::new(crate::support::repo().join(".venv/bin/python"))
        .args([path_str(&script), path_str(models), path_str(d)])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let model = models.join("llama-classifier/model");
    let (ids_train, ids_eval) = (models.join("labeled_train.jsonl"), models.join("labeled_eval.jsonl"));
    let train = |name: &str, train: &Path, eval: &Path| {
        let out = d.join(name);
        let run = crate::support::fine_tune(d, &model, train, eval, &out, &[]);
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        out
    };
    let by_id = train("by_id", &ids_train, &ids_eval);
    let folders = train("folders", &d.join("train_folder"), &d.join("eval_folder"));
    let weights = |out: &Path| std::fs::read(out.join("model.safetensors")).unwrap();
    assert!(weights(&folders) == weights(&by_id), "a save_to_disk folder trained other weights than its JSON Lines");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folders.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "pos", "1": "neg", "2": "mid"}),
        "ClassLabel's names, in order"
    );
    // Labels as names, in an Arrow stream and in Parquet: numbered in sorted order (mid 0,
    // neg 1, pos 2), as class_encode_column would; the same model as each other.
    let arrow = train("arrow", &d.join("named.arrow"), &d.join("named.arrow"));
    let parquet = train("parquet", &d.join("named.parquet"), &d.join("named.parquet"));
    assert!(weights(&arrow) == weights(&parquet), "the Arrow and Parquet forms of one table trained differently");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(arrow.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"], serde_json::json!({"0": "mid", "1": "neg", "2": "pos"}));
    // A DatasetDict names its splits.
    let dict = d.join("dict");
    let out = d.join("refused");
    crate::support::fine_tune(d, &model, &dict, &ids_eval, &out, &[]).assert_clean_error(
        2,
        &format!(
            "{} is a DatasetDict; give one split's folder: {}, {}",
            dict.display(),
            dict.join("train").display(),
            dict.join("test").display()
        ),
    );
}

#[test]
fn labels_given_by_name_train_as_their_ids_and_name_the_classes() {
    // Names sort as their ids: training on names is training on ids, bit for bit, and the
    // names become config.json's id2label and label2id.
    let models = models();
    let dir = crate::support::tempdir();
    let names = ["negative", "neutral", "positive"];
    let (train, eval) = (dir.path().join("train.jsonl"), dir.path().join("eval.jsonl"));
    with_label_names(&models.join("labeled_train.jsonl"), &train, &names);
    with_label_names(&models.join("labeled_eval.jsonl"), &eval, &names);
    let model = models.join("llama-classifier/model");
    let (by_name, by_id) = (dir.path().join("by_name"), dir.path().join("by_id"));
    let run = crate::support::fine_tune(dir.path(), &model, &train, &eval, &by_name, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (ids_train, ids_eval) = (models.join("labeled_train.jsonl"), models.join("labeled_eval.jsonl"));
    let run = crate::support::fine_tune(dir.path(), &model, &ids_train, &ids_eval, &by_id, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let weights = |out: &Path| std::fs::read(out.join("model.safetensors")).unwrap();
    assert!(weights(&by_name) == weights(&by_id), "names trained other weights than their ids");
    let results = |out: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("all_results.json")).unwrap()).unwrap()
    };
    assert_eq!(results(&by_name)["eval_loss"], results(&by_id)["eval_loss"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(by_name.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"], serde_json::json!({"0": "negative", "1": "neutral", "2": "positive"}));
    assert_eq!(config["label2id"], serde_json::json!({"negative": 0, "neutral": 1, "positive": 2}));
    // Evaluation names take the training numbers, whatever order they come in; a name
    // the training data lacks, or ids beside names, is refused by name.
    let unknown = dir.path().join("unknown.jsonl");
    std::fs::write(&unknown, "{\"text\": \"the cat\", \"label\": \"meh\"}\n").unwrap();
    let out = dir.path().join("refused");
    crate::support::fine_tune(dir.path(), &model, &train, &unknown, &out, &[]).assert_clean_error(
        2,
        "label 'meh' does not occur in the training data (its labels: negative, neutral, positive)",
    );
    crate::support::fine_tune(dir.path(), &model, &train, &ids_eval, &out, &[])
        .assert_clean_error(2, "the labels are class ids, the training data's are names (negative, neutral, positive)");
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed, "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": 1}\n").unwrap();
    crate::support::fine_tune(dir.path(), &model, &mixed, &eval, &out, &[])
        .assert_clean_error(2, "line 2: the label is a class id where the first labels are names");
}

#[test]
fn a_batch_whose_activations_cannot_fit_is_refused_before_training() {
    // Tiny weights, but 16 training rows (of 20) of 20000 tokens: the attention scores alone need far more
    // than the machine has. Refused up front with the sizes, not killed mid-step.
    let models = models();
    let dir = crate::support::tempdir();
    let model = dir.path().join("long");
    copy_folder(&models.join("llama-causal/model"), &model, &[]);
    edit_config(&model, |c| drop(c.insert("max_position_embeddings".into(), 1_000_000.into())));
    let data = dir.path().join("long.safetensors");
    let ids = tch::Tensor::randint_low(3, 300, [20, 20_000], (tch::Kind::Int64, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&[("input_ids", &ids)], &data).unwrap();
    let args = [
        "--model-name-or-path",
        path_str(&model),
        "--train-file",
        path_str(&data),
        "--max-seq-length",
        "20000",
        "--per-device-train-batch-size",
        "16",
        "--max-steps",
        "1",
    ];
    host(dir.path(), &args).assert_clean_error(1, "on micro-batches of 16 x 20000 tokens needs about");
    for file in ["trainer_state.json", "model.safetensors", "all_results.json", "outputs.json"] {
        assert!(!dir.path().join("output").join(file).exists(), "a refused run wrote {file}");
    }
}

/// The weights files of a model folder, by name, as bytes.
fn weight_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("model") && (n.ends_with(".safetensors") || n.ends_with(".index.json")))
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn a_base_model_gets_a_new_head_and_sharded_checkpoints_resume_exactly() {
    let models = models();
    let dir = crate::support::tempdir();
    let base = models.join("llama-base/model");
    let sharded = ["--max-steps", "4", "--save-steps", "2", "--save-max-shard-size", "100KB", "--seed", "7"];
    let whole = dir.path().join("whole");
    let run = fine_tune(dir.path(), &base, "labeled", &whole, &sharded);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    // The head transformers would initialize, named as transformers names it.
    assert!(
        run.stderr
            .contains("Some weights of LlamaForSequenceClassification were not initialized from the model checkpoint")
            && run.stderr.contains("newly initialized: [\"score.weight\"]"),
        "{}",
        run.stderr
    );
    // Shards with an index in output_dir and in each checkpoint; no stale single file.
    for folder in [whole.clone(), whole.join("checkpoint-2")] {
        let files = weight_files(&folder);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"model.safetensors.index.json"), "{names:?}");
        assert!(names.len() >= 4 && !names.contains(&"model.safetensors"), "{names:?}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["LlamaForSequenceClassification"]));
    assert_eq!(config["id2label"], serde_json::json!({"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}));
    assert_eq!(config["pad_token_id"], serde_json::json!(2));
    // transformers loads the sharded folder with nothing missing and gives the host's logits.
    let predictions = dir.path().join("predictions.safetensors");
    let predict = host(
        dir.path(),
        &["predict", "--checkpoint", path_str(&whole.join("checkpoint-4")), "--output", path_str(&predictions)],
    );
    assert_eq!(predict.code, 0, "{}", predict.stderr);
    let eval = models.join("labeled_eval.jsonl");
    oracle(&["loads", path_str(&whole.join("checkpoint-4")), "classifier", path_str(&eval), path_str(&predictions)]);
    // Resuming from the sharded checkpoint at step 2 gives the same bytes as the run that
    // did not stop.
    let resumed = dir.path().join("resumed");
    copy_folder(&whole.join("checkpoint-2"), &resumed.join("checkpoint-2"), &[]);
    let run = fine_tune(
        dir.path(),
        &base,
        "labeled",
        &resumed,
        &[&sharded[..], &["--resume-from-checkpoint", "latest"]].concat(),
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("resumed from"), "{}", run.stderr);
    assert!(weight_files(&resumed) == weight_files(&whole), "resumed weights differ from the uninterrupted run's");
}

#[test]
fn bfloat16_parameters_are_loaded_trained_and_saved_as_bfloat16() {
    let models = models();
    let dir = crate::support::tempdir();
    let output = dir.path().join("output");
    let model = models.join("qwen2-causal/model");
    let bf16 = ["--torch-dtype", "bfloat16", "--max-steps", "2", "--save-steps", "1"];
    let run = fine_tune(dir.path(), &model, "text", &output, &bf16);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    // The optimizer steps float32 masters of the bf16 weights, with float32 moments; they
    // are in the checkpoint, so resuming from step 1 ends bitwise where the run did.
    let state = tch::Tensor::read_safetensors(output.join("checkpoint-1/optimizer.safetensors")).unwrap();
    let kinds =
        |suffix: &str| state.iter().filter(|(n, _)| n.ends_with(suffix)).map(|(_, t)| t.kind()).collect::<Vec<_>>();
    assert!(!kinds(".master").is_empty() && kinds(".master").iter().all(|k| *k == tch::Kind::Float));
    assert!(kinds(".exp_avg_sq").iter().all(|k| *k == tch::Kind::Float), "float32 second moments");
    let resumed = dir.path().join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    copy_folder(&output.join("checkpoint-1"), &resumed.join("checkpoint-1"), &[]);
    let run =
        fine_tune(dir.path(), &model, "text", &resumed, &[&bf16[..], &["--resume-from-checkpoint", "latest"]].concat());
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert_eq!(weight_files(&output), weight_files(&resumed), "bf16 resume is exact");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let weights = tch::Tensor::read_safetensors(output.join("model.safetensors")).unwrap();
    assert!(weights.iter().all(|(_, t)| t.kind() == tch::Kind::BFloat16), "every tensor is saved in bfloat16");
    // torch_dtype auto reads config.json's dtype: fine-tuning the saved folder stays bf16.
    let again = dir.path().join("again");
    let run = fine_tune(dir.path(), &output, "text", &again, &["--max-steps", "1"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let weights = tch::Tensor::read_safetensors(again.join("model.safetensors")).unwrap();
    assert!(weights.iter().all(|(_, t)| t.kind() == tch::Kind::BFloat16));
    oracle(&["loads", path_str(&again), "causal"]);
}

#[test]
fn the_example_fine_tunes_a_base_encoder_with_weighted_ce_and_transformers_agrees() {
    let dir = crate::support::tempdir();
    let d = dir.path();
    let example = repo().join("examples/finetune_pretrained");
    let python = |args: &[&str]| {
        let output = Command::new(repo().join(".venv/bin/python")).args(args).current_dir(d).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    python(&[path_str(&example.join("make_tiny_model.py")), "."]);
    // The job names the plugin; it is found next to the host binary.
    crate::support::plugin("weighted_ce");
    let run = host(d, &["--config", path_str(&example.join("job.toml"))]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("loss: weighted_ce (plugin weighted_ce)"), "{}", run.stderr);
    assert!(run.stderr.contains("newly initialized: [\"classifier.weight\", \"classifier.bias\"]"), "{}", run.stderr);
    let accuracy = crate::support::results(d)["eval_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "the classifier did not learn the cue words: eval_accuracy {accuracy}");
    let checked = python(&[path_str(&example.join("check_with_transformers.py")), "output", "eval.jsonl"]);
    let checked: serde_json::Value = serde_json::from_str(checked.trim()).unwrap();
    assert_eq!(checked["model"], "BertForSequenceClassification");
    assert!((checked["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-6, "{checked} vs {accuracy}");
}

#[test]
fn weighted_ce_on_a_causal_lm_is_the_built_in_loss_without_weights() {
    let models = models();
    let dir = crate::support::tempdir();
    let model = models.join("gpt2-causal/model");
    // SGD: the built-in loss is computed chunked and the plugin's over the full logits, so
    // they differ in rounding; Adam's normalized step can blow a near-zero gradient's
    // rounding up to a whole step, SGD keeps it as small as it is.
    let base = ["--max-steps", "2", "--optim", "sgd", "--learning-rate", "0.1"];
    let plain = fine_tune(dir.path(), &model, "text", &dir.path().join("plain"), &base);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let weighted_ce = crate::support::plugin("weighted_ce");
    let extra = [&base[..], &["--plugin", path_str(&weighted_ce)]].concat();
    let plugged = fine_tune(dir.path(), &model, "text", &dir.path().join("plugged"), &extra);
    assert_eq!(plugged.code, 0, "{}", plugged.stderr);
    let losses = |out: &str| -> Vec<f64> {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(out).join("trainer_state.json")).unwrap())
                .unwrap();
        state["log_history"].as_array().unwrap().iter().filter_map(|e| e["loss"].as_f64()).collect()
    };
    let (a, b) = (losses("plain"), losses("plugged"));
    assert_eq!(a.len(), 2);
    // Relative: the chunked head multiplies other shapes than the full one, so libtorch's
    // kernels round the logits differently (2.7e-6 relative seen at step 1 on a busy machine).
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs()), "{a:?} vs {b:?}");
}

#[test]
fn csv_and_parquet_text_columns_feed_a_pretrained_classifier() {
    let models = models();
    let dir = crate::support::tempdir();
    let d = dir.path();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(models.join("labeled_train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut csv = String::from("label,text\n");
    for row in &rows {
        csv += &format!("{},\"{}\"\n", row["label"], row["text"].as_str().unwrap());
    }
    std::fs::write(d.join("train.csv"), csv).unwrap();
    let script = "import json, sys, pyarrow as pa, pyarrow.parquet as pq\n\
                  rows = [json.loads(l) for l in open(sys.argv[1])]\n\
                  pq.write_table(pa.table({'text': [r['text'] for r in rows], 'label': [r['label'] for r in rows]}), 'train.parquet')";
    let status = Command::new(repo().join(".venv/bin/python"))
        .args(["-c", script, path_str(&models.join("labeled_train.jsonl"))])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(status.success());
    let model = models.join("qwen2-classifier/model");
    for (i, file) in ["train.csv", "train.parquet", path_str(&models.join("labeled_train.jsonl"))].iter().enumerate() {
        let output = d.join(format!("out-{i}"));
        let run = fine_tune(d, &model, "labeled", &output, &["--train-file", file, "--max-steps", "1"]);
        assert_eq!(run.code, 0, "{file}: {}", run.stderr);
        assert!(run.stderr.contains("training: 12 examples"), "{file}: {}", run.stderr);
    }
    // The same texts and labels from any of the three formats: the same first loss.
    let first_loss = |i: usize| -> f64 {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(format!("out-{i}/trainer_state.json"))).unwrap())
                .unwrap();
        state["log_history"][0]["loss"].as_f64().unwrap()
    };
    assert_eq!(first_loss(0), first_loss(2), "CSV and JSONL give the same batch");
    assert_eq!(first_loss(1), first_loss(2), "Parquet and JSONL give the same batch");
}

#[test]
fn token_files_in_transformers_label_convention_evaluate_as_transformers_in_float32_and_bf16() {
    // Labels aligned with input_ids (the loss shifts them) or none at all, as Trainer and
    // TRL users build data; bf16 evaluation upcasts the logits for the loss, as
    // transformers' ForCausalLMLoss. Once, aligned labels were taken as shifted (eval loss
    // 4.5 where transformers gives 5.7) and the bf16 loss was 8.5e-3 relative off.
    let models = models();
    let dir = crate::support::tempdir();
    let model = models.join("llama-causal/model");
    let text = models.join("text_eval.jsonl");
    oracle(&["token_files", path_str(&model), path_str(&text), path_str(dir.path())]);
    for file in ["labeled.safetensors", "ids.safetensors"] {
        let data = dir.path().join(file);
        for dtype in ["float32", "bfloat16"] {
            let output = dir.path().join(format!("{file}-{dtype}"));
            let run = host(
                dir.path(),
                &[
                    "--model-name-or-path",
                    path_str(&model),
                    "--train-file",
                    path_str(&data),
                    "--eval-file",
                    path_str(&data),
                    "--do-train",
                    "false",
                    "--do-eval",
                    "true",
                    "--torch-dtype",
                    dtype,
                    "--per-device-eval-batch-size",
                    "64",
                    "--output-dir",
                    path_str(&output),
                    "--device",
                    "cpu",
                ],
            );
            assert_eq!(run.code, 0, "{file} {dtype}: {}", run.stderr);
            let results: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(output.join("eval_results.json")).unwrap()).unwrap();
            let mine = results["eval_loss"].as_f64().unwrap();
            let theirs: serde_json::Value =
                serde_json::from_str(oracle(&["eval_loss", path_str(&model), path_str(&data), dtype]).trim()).unwrap();
            let theirs = theirs["eval_loss"].as_f64().unwrap();
            assert!((mine - theirs).abs() <= 1e-5 * theirs, "{file} {dtype}: eval_loss {mine}, transformers {theirs}");
        }
    }
}

#[test]
fn every_case_agrees_with_transformers_layer_by_layer() {
    // The blocks' input, each block's output and the logits on the evaluation texts
    // (padded), against transformers' own through forward hooks: a port's mistake names
    // its layer rather than a training step.
    let models = models();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(models.join("cases.json")).unwrap()).unwrap();
    let dir = crate::support::tempdir();
    let mut failures = Vec::new();
    // The golden outputs of every case from one oracle process (its start-up dominates).
    let paths = |case: &serde_json::Value| {
        let (name, data) = (case["name"].as_str().unwrap(), case["data"].as_str().unwrap());
        let model = models.join(name).join("model");
        (model, models.join(format!("{data}_eval.jsonl")), dir.path().join(format!("{name}.safetensors")))
    };
    let all: Vec<(PathBuf, PathBuf, PathBuf)> = cases.iter().map(paths).collect();
    let mut args = vec!["layers"];
    for (model, text, golden) in &all {
        args.extend([path_str(model), path_str(text), path_str(golden)]);
    }
    oracle(&args);
    for (case, (model, _, golden)) in cases.iter().zip(&all) {
        let name = case["name"].as_str().unwrap();
        let reference: std::collections::HashMap<String, tch::Tensor> =
            tch::Tensor::read_safetensors(golden).unwrap().into_iter().collect();
        let (ids, mask) = (&reference["input_ids"], &reference["attention_mask"]);
        let traced = host::engine::models::pretrained::trace_layers(model, ids, mask).unwrap();
        let expected_layers = reference.len() - 2;
        assert_eq!(traced.len(), expected_layers, "{name}: {:?}", traced.iter().map(|(n, _)| n).collect::<Vec<_>>());
        // Only real tokens count: padding positions are never read.
        let real = mask.ne(0);
        for (layer, mine) in &traced {
            let theirs = &reference[layer];
            let keep = if mine.dim() == 3 { real.unsqueeze(-1).expand_as(mine) } else { mine.ones_like().ne(0) };
            let difference = (mine - theirs).abs().masked_select(&keep).max().double_value(&[]);
            if difference > 1e-4 {
                failures.push(format!("{name}: {layer} differs from transformers' by {difference:.2e}"));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_classifier_given_unlabelled_text_predicts_classes() {
    let dir = crate::support::tempdir();
    let models = models();
    let (model, labeled) = (models.join("llama-classifier/model"), models.join("labeled_eval.jsonl"));
    let output = dir.path().join("out");
    let args = ["--model-name-or-path", path_str(&model), "--train-file", path_str(&labeled)];
    let run = host(
        dir.path(),
        &[&args[..], &["--max-steps", "2", "--save-steps", "2", "--output-dir", path_str(&output)]].concat(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(&labeled).unwrap();
    let unlabelled: String = text
        .lines()
        .map(|line| {
            let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
            row.as_object_mut().unwrap().remove("label");
            format!("{row}\n")
        })
        .collect();
    let unlabelled_file = dir.path().join("unlabelled.jsonl");
    std::fs::write(&unlabelled_file, unlabelled).unwrap();
    let checkpoint = output.join("checkpoint-2");
    let predict = |data: &Path, out: &str| {
        let out = dir.path().join(out);
        let args = [
            "predict",
            "--checkpoint",
            path_str(&checkpoint),
            "--eval-file",
            path_str(data),
            "--output",
            path_str(&out),
        ];
        let run = host(dir.path(), &args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let rows: Vec<serde_json::Value> =
            std::fs::read_to_string(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        rows
    };
    let (with_labels, without) = (predict(&labeled, "a.jsonl"), predict(&unlabelled_file, "b.jsonl"));
    assert_eq!(with_labels.len(), without.len());
    for (a, b) in with_labels.iter().zip(&without) {
        // Classes with their probabilities, as with labels; never next-token ids.
        assert_eq!(a["prediction"], b["prediction"]);
        assert_eq!(a["probabilities"], b["probabilities"]);
        assert_eq!(b["label"], -100);
    }
    // Unlabelled text cannot train the classifier: said, not trained as a language model.
    let args = ["--model-name-or-path", path_str(&output), "--train-file", path_str(&unlabelled_file)];
    host(dir.path(), &[&args[..], &["--output-dir", path_str(&dir.path().join("again"))]].concat())
        .assert_clean_error(2, "the training data has nothing to learn: every label is -100");
}
