//! Data files: every format gives the same training, the label and feature columns are
//! chosen by name, and bad data is a one-line error naming the file and the place.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::support::*;

/// A small two-class problem: 200 examples of 6 features.
fn problem() -> (Tensor, Tensor) {
    let _generator = generator_lock();
    tch::manual_seed(11);
    let input = Tensor::randn([200, 6], (Kind::Float, tch::Device::Cpu));
    let labels = input.narrow(1, 0, 1).squeeze_dim(1).gt(0.0).to_kind(Kind::Int64);
    (input, labels)
}

fn write_csv(path: &Path, input: &Tensor, labels: &Tensor, label_name: &str) {
    let rows = Vec::<Vec<f32>>::try_from(input).unwrap();
    let labels = Vec::<i64>::try_from(labels).unwrap();
    let mut text = format!("f0,f1,f2,f3,f4,f5,{label_name}\n");
    for (row, label) in rows.iter().zip(&labels) {
        // `{:?}` prints the shortest text that reads back as the same f32.
        let values: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        text += &format!("{},{label}\n", values.join(","));
    }
    std::fs::write(path, text).unwrap();
}

/// data.csv as Parquet: float32 feature columns, an int64 label column.
const PARQUET_FROM_CSV: &str = r#"
import csv, pyarrow as pa, pyarrow.parquet as pq
rows = list(csv.DictReader(open("data.csv")))
columns = {k: pa.array([float(r[k]) for r in rows], pa.float32()) for k in rows[0] if k != "label"}
columns["label"] = pa.array([int(r["label"]) for r in rows], pa.int64())
pq.write_table(pa.table(columns), "data.parquet")
"#;

const QUICK: &[&str] =
    &["--num-train-epochs", "2", "--logging-steps", "2", "--eval-strategy", "epoch", "--save-strategy", "no"];

fn train_on(dir: &Path, file: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec!["--train-file", file];
    args.extend_from_slice(QUICK);
    args.extend_from_slice(extra);
    let run = host(dir, &args);
    assert_eq!(run.code, 0, "{file}: stderr:\n{}", run.stderr);
    history_without_timings(dir)
}

#[test]
fn every_format_trains_the_same() {
    let dir = tempdir();
    let (input, labels) = problem();
    let d = dir.path();
    Tensor::write_safetensors(&[("input", &input), ("labels", &labels)], d.join("data.safetensors")).unwrap();
    // Other names, chosen with label_column and feature_columns; int32 labels.
    Tensor::write_npz(&[("x", &input), ("y", &labels.to_kind(Kind::Int))], d.join("data.npz")).unwrap();
    std::fs::create_dir(d.join("npy")).unwrap();
    input.write_npy(d.join("npy/input.npy")).unwrap();
    labels.write_npy(d.join("npy/label.npy")).unwrap();
    write_csv(&d.join("data.csv"), &input, &labels, "label");
    // Parquet as pyarrow (and so Hugging Face datasets) writes it, from the CSV.
    let status = std::process::Command::new(repo().join(".venv/bin/python"))
        .args(["-c", PARQUET_FROM_CSV])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(status.success());

    let reference = train_on(&d.join("a"), "../data.safetensors", &[]);
    assert!(reference.iter().any(|e| e.get("eval_f1").is_some()), "{reference:?}");
    let runs = [
        ("../data.npz", vec!["--label-column", "y", "--feature-columns", "x"]),
        ("../npy", vec![]),
        ("../data.csv", vec![]),
        ("../data.parquet", vec![]),
    ];
    for (i, (file, extra)) in runs.iter().enumerate() {
        let history = train_on(&d.join(format!("run{i}")), file, extra);
        assert_eq!(history, reference, "{file} trains differently from the same data in safetensors");
    }

    // A separate evaluation file instead of the split.
    let (eval_input, eval_labels) = (input.narrow(0, 0, 50), labels.narrow(0, 0, 50));
    Tensor::write_safetensors(&[("input", &eval_input), ("labels", &eval_labels)], d.join("eval.safetensors")).unwrap();
    let run = host(
        &d.join("a"),
        &["--train-file", "../data.safetensors", "--eval-file", "../eval.safetensors", "--max-steps", "3"],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("training: 200 examples, 50 for evaluation"), "{}", run.stderr);
}

#[test]
fn bad_data_is_a_one_line_error_with_the_place() {
    let dir = tempdir();
    let d = dir.path();
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    write("word.csv", "a,b,label\n1,2,0\n3,x,1\n");
    write("ragged.csv", "a,b,label\n1,2,0\n3,1\n");
    write("empty.csv", "a,b,label\n");
    write("classes.csv", "a,b,label\n1,2,0\n3,4,1\n5,6,7\n1,1,1\n");
    write("text.jsonl", "{\"text\": \"1+1=2\"}\n");
    let cases: &[(&[&str], &str)] = &[
        (&["--train-file", "word.csv"], "word.csv line 3, column 'b': 'x' is not a number"),
        (&["--train-file", "ragged.csv"], "ragged.csv: line 3: 2 fields, the header has 3"),
        (&["--train-file", "empty.csv"], "empty.csv: no examples (only a header)"),
        (&["--train-file", "missing.safetensors"], "data file missing.safetensors does not exist"),
        (
            &["--train-file", "word.csv", "--label-column", "y"],
            "word.csv: no column 'y' (label_column); columns: a, b, label",
        ),
        (&["--train-file", "classes.csv", "--num-labels", "3", "--validation-split-percentage", "25"], "label 7 (item"),
        (&["--train-file", "text.jsonl"], "text.jsonl: text data needs tokenizer_file"),
        (&["--train-file", "text.jsonl", "--tokenizer-file", "nope.json"], "tokenizer_file nope.json does not exist"),
        (&["--model", "gpt"], "the gpt model reads the data field 'input_ids'"),
        (
            &["--model", "resnet"],
            "model 'resnet' is not known; use mlp, cnn, transformer, gpt, torchscript:FILE.pt or plugin:NAME",
        ),
    ];
    for (args, needle) in cases {
        host(d, args).assert_clean_error(2, needle);
    }
}

#[test]
fn parquet_text_and_token_columns_train() {
    let dir = tempdir();
    let d = dir.path();
    // A text column with class labels, and the same texts pre-tokenized as ragged
    // input_ids lists (as a tokenized Hugging Face dataset is saved).
    let script = r#"
import json, pyarrow as pa, pyarrow.parquet as pq
vocab = json.load(open("tokenizer.json"))["model"]["vocab"]
texts = [f"{a}+{b}" for a in range(30) for b in range(10)]
labels = [int("7" in t) for t in texts]
pq.write_table(pa.table({"text": texts, "label": labels}), "texts.parquet")
ids = [[2] + [vocab[c] for c in t] + [3] for t in texts]
pq.write_table(pa.table({"input_ids": ids, "labels": labels}), "tokens.parquet")
"#;
    std::fs::copy(repo().join("examples/gpt_addition/tokenizer.json"), d.join("tokenizer.json")).unwrap();
    let status = std::process::Command::new(repo().join(".venv/bin/python"))
        .args(["-c", script])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(status.success());
    let common = [
        "--model",
        "transformer",
        "--hidden-size",
        "32",
        "--num-attention-heads",
        "2",
        "--num-train-epochs",
        "2",
        "--save-strategy",
        "no",
        "--eval-strategy",
        "epoch",
        // The tokenizer's vocabulary (16) has a token ('=') that the token ids lack.
        "--vocab-size",
        "16",
    ];
    let mut args = vec!["--train-file", "texts.parquet", "--tokenizer-file", "tokenizer.json"];
    args.extend(common);
    let run = host(d, &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    let from_text = history_without_timings(d);
    let mut args = vec!["--train-file", "tokens.parquet"];
    args.extend(common);
    let run = host(d, &args);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    // The tokenizer and the hand tokenization agree, so both runs are the same run.
    assert_eq!(history_without_timings(d), from_text);
}
