"""Packing against padding (BENCHMARKS.md; run after bench/run.sh built the release host, or
`cargo build --release -p host`): the 20M Llama-shaped folder of llama_folder.py
fine-tuned for one epoch on 512 texts of 16 to 128 words (a word is a token of its
tokenizer), batch 8, max_seq_length 128, float32 on the CPU; padded batches (each cut to
its longest text) against --packing (rows of up to 128 tokens). The rate counts the texts'
own tokens (no padding) over train_runtime. Interleaved repeats, medians.
"""

import json
import os
import pathlib
import random
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import BENCH, PYTHON, RELEASE, run  # noqa: E402

TEXTS, BATCH, LENGTH = 512, 8, 128


def main(repeats=3, threads=2):
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        folder = work / "llama-20m"
        run([str(PYTHON), str(BENCH / "llama_folder.py"), str(folder)], os.environ, work)
        rng = random.Random(0)
        lengths = [rng.randint(16, LENGTH) for _ in range(TEXTS)]
        with open(work / "texts.jsonl", "w") as f:
            for n in lengths:
                f.write(json.dumps({"text": " ".join(f"w{rng.randint(3, 8191)}" for _ in range(n))}) + "\n")
        tokens = sum(lengths)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), RUST_LOG="info")
        rates, rows = {"padded": [], "packed": []}, {}
        for repeat in range(repeats):
            order = ["padded", "packed"] if repeat % 2 == 0 else ["packed", "padded"]
            for name in order:
                output = work / name
                command = [str(RELEASE / "host"), "--model-name-or-path", str(folder),
                           "--train-file", str(work / "texts.jsonl"), "--num-train-epochs", "1",
                           "--per-device-train-batch-size", str(BATCH), "--max-seq-length", str(LENGTH),
                           "--eval-strategy", "no", "--save-strategy", "no", "--logging-steps", "500",
                           "--disable-tqdm", "--output-dir", str(output), "--device", "cpu"]
                if name == "packed":
                    command.append("--packing")
                _, stderr, _, _ = run(command, env, work)
                runtime = json.loads((output / "all_results.json").read_text())["train_runtime"]
                rates[name].append(tokens / runtime)
                for line in stderr.splitlines():
                    if "packed into" in line:
                        rows[name] = line.split("packed into ")[1].split(" rows")[0]
                rows.setdefault(name, str(TEXTS))
        padded, packed = statistics.median(rates["padded"]), statistics.median(rates["packed"])
        print(f"{TEXTS} texts, {tokens} tokens, batch {BATCH}, max_seq_length {LENGTH}, {threads} threads")
        print(f"padded: {rows['padded']} rows, {padded:,.0f} text tokens/s")
        print(f"packed: {rows['packed']} rows, {packed:,.0f} text tokens/s ({packed / padded:.2f}x)")


if __name__ == "__main__":
    main()
