//! Malformed data, as users hand it over: each file ends the run with exit 2 (or 1 for
//! what the machine cannot hold), one line naming the file and the problem, and no panic.

use crate::support::*;

/// Writes the files that Python writes best (safetensors, npz, Parquet) into the current
/// folder.
const MAKE_FILES: &str = r#"
import os, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from safetensors.numpy import save_file
x = (np.arange(80, dtype=np.float32).reshape(20, 4) % 7) / 7
y = (np.arange(20) % 3).astype(np.int64)
open("garbage.safetensors", "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}garbage")
save_file({"input": x, "labels": y}, "good.safetensors")
data = open("good.safetensors", "rb").read()
open("truncated.safetensors", "wb").write(data[: len(data) // 2])
save_file({"input": x}, "nolabels.safetensors")
save_file({"input": x, "labels": y[:10]}, "rows.safetensors")
save_file({"input": x[:, 0].copy(), "labels": y}, "input1d.safetensors")
bad = x.copy(); bad[3, 2] = np.nan
save_file({"input": bad, "labels": y}, "nan.safetensors")
bad = x.copy(); bad[5, 1] = np.inf
save_file({"input": bad, "labels": y}, "inf.safetensors")
save_file({"input": x.astype(np.float64) * 1e39, "labels": y}, "f64huge.safetensors")
save_file({"input": x.astype(np.uint16), "labels": y}, "u16.safetensors")
save_file({"input": x[:0], "labels": y[:0]}, "zero.safetensors")
save_file({"input": np.ones((10, 5), np.float32), "labels": y[:10]}, "eval5.safetensors")
save_file({"input": x, "other": x, "labels": y}, "two.safetensors")
save_file({"input": x, "labels": (y * 1000000000).astype(np.int64)}, "hugelabel.safetensors")
save_file({"input": x, "labels": y.reshape(20, 1)}, "labels_n1.safetensors")
np.save("single.npy", x)
open("garbage.npz", "wb").write(b"PK\x03\x04garbage")
os.makedirs("npy_nolabels"); np.save("npy_nolabels/input.npy", x)
os.makedirs("npy_bad"); open("npy_bad/input.npy", "wb").write(b"\x93NUMPY\x01\x00garbage"); np.save("npy_bad/labels.npy", y)
os.makedirs("npy_empty")
open("garbage.parquet", "wb").write(b"PAR1garbagePAR1")
empty = pa.array([[], [], [], []], type=pa.list_(pa.float64()))
pq.write_table(pa.table({"input": empty, "label": pa.array([0, 1, 0, 1])}), "empty_lists.parquet")
pq.write_table(pa.table({"a": pa.array([1.0, 2.0, 3.0, 4.0])}), "nolabel.parquet")
pq.write_table(pa.table({"text": pa.array(["a", "b", "c", "d"]), "label": pa.array([0, 1, 0, 1])}), "text.parquet")
pq.write_table(pa.table({"a": pa.array([1.0, float("nan"), 3.0, 4.0]), "label": pa.array([0, 1, 0, 1])}), "nan.parquet")
pq.write_table(pa.table({"input_ids": [[1, 2, 3], [4, 5], [6]], "attention_mask": [[1, 1, 1], [1, 1], [1]], "labels": [0, 1, 0]}), "ragged_mask.parquet")
save_file({"layers.0.weight": np.zeros((3, 3), np.float32)}, "init_wrong.safetensors")
"#;

/// Rows of a small, valid CSV body (a, b, label).
fn rows() -> String {
    (0..10).map(|i| format!("{},{},{}\n", i % 7, (i * 3) % 5, i % 2)).collect()
}

#[test]
fn malformed_data_ends_in_one_clear_line() {
    let dir = tempdir();
    let d = dir.path();
    let write = |name: &str, text: String| std::fs::write(d.join(name), text).unwrap();
    let header = "a,b,label\n";
    write("good.csv", format!("{header}{}", rows()));
    write("word.csv", format!("{header}1,2,0\n3,x,1\n{}", rows()));
    write("nan.csv", format!("{header}1,nan,0\n{}", rows()));
    write("inf.csv", format!("{header}1,-inf,0\n{}", rows()));
    write("huge.csv", format!("{header}1,1e39,0\n{}", rows()));
    write("ragged.csv", format!("{header}1,2\n{}", rows()));
    write("quote.csv", format!("{header}1,\"2,0\n{}", rows()));
    write("header_only.csv", header.to_owned());
    write("empty.csv", String::new());
    write("one_row.csv", format!("{header}1,2,0\n"));
    write("big_label.csv", format!("{header}1,2,1000000000\n{}", rows()));
    write("neg_label.csv", format!("{header}1,2,-5\n{}", rows()));
    write("nolabel.csv", format!("a,b,c\n{}", rows()));
    write("onlylabel.csv", format!("label\n{}", (0..10).map(|i| format!("{}\n", i % 2)).collect::<String>()));
    write(
        "float_label.csv",
        format!("{header}{}", (0..10).map(|i| format!("{i},{i},{}\n", i as f64 * 0.5)).collect::<String>()),
    );
    write("one_class.csv", format!("{header}{}", (0..10).map(|i| format!("{i},{i},0\n")).collect::<String>()));
    write("unicode.csv", format!("{header}1,2,0\n3,\u{ff14},1\n{}", rows()));
    write("notok.jsonl", "{\"text\":\"1+1=2\",\"label\":0}\n{\"text\":\"2+2=4\",\"label\":1}\n".to_owned());
    write("badline.jsonl", "{\"text\":\"1+1=2\",\"label\":0}\n{\"text\": oops\n".to_owned());
    write("nokey.jsonl", "{\"body\":\"1+1=2\",\"label\":0}\n{\"body\":\"2+2=4\",\"label\":1}\n".to_owned());
    write("tok_garbage.json", "not a tokenizer".to_owned());
    write("notes.txt", "hello".to_owned());
    write("model_garbage.pt", "garbage".to_owned());
    write("init_garbage.safetensors", "garbage".to_owned());
    let status = std::process::Command::new(repo().join(".venv/bin/python"))
        .args(["-c", MAKE_FILES])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(status.success());
    let tokenizer = repo().join("examples/gpt_addition/tokenizer.json");
    let tok = path_str(&tokenizer);

    let cases: &[(&[&str], i32, &str)] = &[
        // CSV
        (&["--train-file", "word.csv"], 2, "word.csv line 3, column 'b': 'x' is not a number"),
        (&["--train-file", "nan.csv"], 2, "nan.csv line 2, column 'b': 'nan' is not a finite float32 number"),
        (&["--train-file", "inf.csv"], 2, "inf.csv line 2, column 'b': '-inf' is not a finite float32 number"),
        (&["--train-file", "huge.csv"], 2, "huge.csv line 2, column 'b': '1e39' is not a finite float32 number"),
        (&["--train-file", "ragged.csv"], 2, "ragged.csv: line 2: 2 fields, the header has 3"),
        (&["--train-file", "quote.csv"], 2, "quote.csv: line 2: 2 fields, the header has 3"),
        (&["--train-file", "header_only.csv"], 2, "header_only.csv: no examples (only a header)"),
        (&["--train-file", "empty.csv"], 2, "empty.csv: empty file; a CSV needs a header line"),
        (
            &["--train-file", "one_row.csv", "--eval-strategy", "epoch"],
            2,
            "one_row.csv: 1 example; at least 2 are needed to split off evaluation data",
        ),
        (&["--train-file", "big_label.csv"], 2, "label 1000000000 (item 0) would make 1000000001 classes"),
        (&["--train-file", "neg_label.csv"], 2, "label -5 (item 0) is outside the model's 2 classes"),
        (&["--train-file", "nolabel.csv"], 2, "nolabel.csv: no 'labels' or 'label' column (columns: a, b, c)"),
        (&["--train-file", "word.csv", "--label-column", "y"], 2, "word.csv: no column 'y' (label_column)"),
        (&["--train-file", "word.csv", "--feature-columns", "a,zz"], 2, "word.csv: no column 'zz' (feature_columns)"),
        (&["--train-file", "onlylabel.csv"], 2, "onlylabel.csv: no feature columns besides the label column"),
        (&["--train-file", "float_label.csv"], 2, "labels are not whole numbers"),
        (&["--train-file", "one_class.csv"], 2, "a classifier needs at least 2 classes (num_labels = 1)"),
        (&["--train-file", "unicode.csv"], 2, "unicode.csv line 3, column 'b': '\u{ff14}' is not a number"),
        (&["--train-file", "good.csv", "--num-labels", "1000000000"], 1, "out of memory allocating"),
        // safetensors
        (&["--train-file", "garbage.safetensors"], 2, "garbage.safetensors: not a readable safetensors file"),
        (&["--train-file", "truncated.safetensors"], 2, "truncated.safetensors: not a readable safetensors file"),
        (
            &["--train-file", "nolabels.safetensors"],
            2,
            "nolabels.safetensors: no 'labels' or 'label' field (fields: input)",
        ),
        (&["--train-file", "rows.safetensors"], 2, "field 'labels' has shape [10] but 'input' has 20 rows"),
        (&["--train-file", "input1d.safetensors"], 2, "the mlp model needs 'input' with a row per example"),
        (
            &["--train-file", "nan.safetensors"],
            2,
            "field 'input' has a value that is not a finite float32 number (NaN) at row 3, column 2",
        ),
        (
            &["--train-file", "inf.safetensors"],
            2,
            "field 'input' has a value that is not a finite float32 number (inf) at row 5, column 1",
        ),
        (
            &["--train-file", "f64huge.safetensors"],
            2,
            "f64huge.safetensors: field 'input' has a value that is not a finite float32 number",
        ),
        (&["--train-file", "u16.safetensors"], 2, "u16.safetensors: tensor 'input' has type U16, not supported"),
        (&["--train-file", "zero.safetensors"], 2, "zero.safetensors: no examples"),
        (
            &["--train-file", "good.safetensors", "--eval-file", "eval5.safetensors"],
            2,
            "eval5.safetensors: field 'input' is shaped [5] per example, the training data's [4]",
        ),
        (&["--train-file", "two.safetensors", "--feature-columns", "input,other"], 2, "feature_columns names 2 fields"),
        (&["--train-file", "hugelabel.safetensors"], 2, "would make 2000000001 classes"),
        (&["--train-file", "good.safetensors", "--label-column", "input"], 2, "labels are not whole numbers"),
        (
            &["--train-file", "good.safetensors", "--num-labels", "2"],
            2,
            "label 2 (item 2) is outside the model's 2 classes",
        ),
        (&["--train-file", "good.safetensors", "--model", "cnn"], 2, "conv blocks halve the 2x2 image to nothing"),
        (&["--train-file", "good.safetensors", "--model", "gpt"], 2, "the gpt model reads the data field 'input_ids'"),
        // .npy and .npz
        (&["--train-file", "single.npy"], 2, "single.npy: a single .npy file holds one array"),
        (&["--train-file", "garbage.npz"], 2, "garbage.npz: not a readable .npz file"),
        (&["--train-file", "npy_nolabels"], 2, "npy_nolabels: no 'labels' or 'label' field (fields: input)"),
        (&["--train-file", "npy_bad"], 2, "npy_bad/input.npy: not a readable .npy file"),
        (&["--train-file", "npy_empty"], 2, "npy_empty: no .npy files in the folder"),
        // Parquet
        (&["--train-file", "garbage.parquet"], 2, "garbage.parquet: not a readable Parquet file"),
        (&["--train-file", "empty_lists.parquet"], 2, "needs at least one feature per example"),
        (&["--train-file", "nolabel.parquet"], 2, "nolabel.parquet: no 'labels' field"),
        (&["--train-file", "text.parquet"], 2, "text.parquet: text data needs tokenizer_file"),
        // Its own attention_mask, and no second one made for the padded input_ids.
        (&["--train-file", "ragged_mask.parquet", "--model", "cnn"], 2, "(fields: input_ids, attention_mask, labels)"),
        (
            &["--train-file", "nan.parquet"],
            2,
            "nan.parquet: field 'input' has a value that is not a finite float32 number (NaN) at row 1, column 0",
        ),
        // JSON Lines text
        (&["--train-file", "notok.jsonl"], 2, "notok.jsonl: text data needs tokenizer_file"),
        (&["--train-file", "badline.jsonl", "--tokenizer-file", tok], 2, "badline.jsonl line 2: not JSON"),
        (
            &["--train-file", "nokey.jsonl", "--tokenizer-file", tok],
            2,
            "nokey.jsonl line 1: no 'text' key (text_column)",
        ),
        (
            &["--train-file", "notok.jsonl", "--tokenizer-file", "nope.json"],
            2,
            "tokenizer_file nope.json does not exist",
        ),
        (
            &["--train-file", "notok.jsonl", "--tokenizer-file", "tok_garbage.json"],
            2,
            "tokenizer_file tok_garbage.json: not a readable tokenizer.json",
        ),
        (
            &["--train-file", "notok.jsonl", "--tokenizer-file", tok, "--model", "gpt", "--generation-separator", "#"],
            2,
            "generation_separator '#' is not a token of",
        ),
        (
            &[
                "--train-file",
                "notok.jsonl",
                "--tokenizer-file",
                tok,
                "--model",
                "gpt",
                "--max-seq-length",
                "100000000",
            ],
            1,
            "out of memory allocating",
        ),
        // Files that are not data, and models and weights that do not fit
        (&["--train-file", "notes.txt"], 2, "notes.txt: unknown data format '.txt'"),
        (&["--train-file", "missing.csv"], 2, "data file missing.csv does not exist"),
        (
            &["--model", "torchscript:model_garbage.pt", "--train-file", "good.safetensors"],
            2,
            "model_garbage.pt is not a TorchScript module",
        ),
        (
            &["--model", "torchscript:missing.pt", "--train-file", "good.safetensors"],
            2,
            "TorchScript file missing.pt does not exist",
        ),
        (
            &["--init-weights", "init_garbage.safetensors"],
            2,
            "init_weights: init_garbage.safetensors is not a readable safetensors file",
        ),
        (
            &["--init-weights", "init_wrong.safetensors"],
            2,
            "init_weights: init_wrong.safetensors does not fit the model (missing: layers.0.bias",
        ),
    ];
    assert!(cases.len() >= 40);
    for (args, code, expected) in cases {
        let run = host(d, &[args, &["--max-steps", "2", "--output-dir", "out"][..]].concat());
        assert_eq!(run.code, *code, "{args:?}: stderr:\n{}", run.stderr);
        run.assert_clean_error(*code, expected);
    }
    // [N, 1] integer labels are class ids: the run trains and evaluates them.
    let run = host(
        d,
        &["--train-file", "labels_n1.safetensors", "--max-steps", "2", "--eval-strategy", "steps", "--eval-steps", "2"],
    );
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(results(d)["eval_accuracy"].is_number(), "{}", results(d));
}
