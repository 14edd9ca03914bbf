"""The pretrained-model benchmarks of BENCHMARKS.md (bench/run.py calls them; run alone with
`python bench/pretrained.py`, after bench/run.sh has built the release host once).

Fine-tuning: a Llama-shaped model (4 layers, width 512, 8 heads, 2 KV heads, vocabulary
8192; about 20M parameters) written by llama_folder.py, on 256 random sequences of 128
tokens, batch 8, AdamW with weight decay, clipping at 1.0, linear decay, float32 on the CPU:
the host (--model-name-or-path) against Hugging Face Trainer and a plain PyTorch loop, both
on transformers' LlamaForCausalLM (llama_finetune.py). Runs interleaved, medians of tokens
per second over the training steps, peak RSS of each whole run.

Loading: a 1 GB float32 checkpoint of the same architecture (16 layers, width 1024): the
host's own load time (its log line) and the peak RSS of a whole `host generate` run that
loads it and makes one token, beside the same run on the 20M model (the process's share).
"""

import json
import os
import pathlib
import re
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import BENCH, PYTHON, RELEASE, ROOT, run  # noqa: E402

BATCH, LENGTH = 8, 128


def finetune(work, steps, repeats, threads):
    folder = work / "llama-20m"
    if not folder.exists():
        run([str(PYTHON), str(BENCH / "llama_folder.py"), str(folder)], os.environ, work)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), RUST_LOG="warn")
    tokens = steps * BATCH * LENGTH

    def host_rate(output):
        return lambda stdout: tokens / json.loads((output / "all_results.json").read_text())["train_runtime"]

    printed = lambda stdout: json.loads(stdout.strip().splitlines()[-1])["tokens_per_second"]
    data = str(folder / "data.safetensors")
    host = [str(RELEASE / "host"), "--model-name-or-path", str(folder), "--train-file", data, "--eval-file", data,
            "--max-steps", str(steps), "--per-device-train-batch-size", str(BATCH), "--max-seq-length", str(LENGTH),
            "--learning-rate", "5e-5", "--weight-decay", "0.01", "--eval-strategy", "no", "--save-strategy", "no",
            "--logging-steps", "500", "--disable-tqdm", "--output-dir", str(work / "host-llama")]
    table = {
        "host": (host, host_rate(work / "host-llama")),
        "pytorch": ([str(PYTHON), str(BENCH / "llama_finetune.py"), "loop", str(folder), str(steps), str(BATCH),
                     str(work / "loop")], printed),
        "hf": ([str(PYTHON), str(BENCH / "llama_finetune.py"), "hf", str(folder), str(steps), str(BATCH),
                str(work / "hf-llama")], printed),
    }
    names = list(table)
    rates = {name: [] for name in names}
    peak = {name: 0.0 for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            command, read = table[name]
            stdout, _, _, rss = run(command, env, work)
            rates[name].append(read(stdout))
            peak[name] = max(peak[name], rss)
    return {"threads": threads, "tokens_per_second": {n: statistics.median(v) for n, v in rates.items()},
            "all": rates, "peak_rss_mb": peak}


def load(work, repeats):
    big, small = work / "llama-1gb", work / "llama-20m"
    if not big.exists():
        run([str(PYTHON), str(BENCH / "llama_folder.py"), str(big), "--size", "1gb", "--examples", "8",
             "--length", "16"], os.environ, work)
    env = dict(os.environ, RUST_LOG="info")
    result = {"file_mb": (big / "model.safetensors").stat().st_size / 1e6}
    for name, folder in (("1gb", big), ("20m", small)):
        seconds, rss = [], []
        for _ in range(repeats):
            command = [str(RELEASE / "host"), "generate", "--model", str(folder), "--prompt", "w5 w6",
                       "--max-new-tokens", "1", "--device", "cpu"]
            _, stderr, wall, peak = run(command, env, work)
            seconds.append(float(re.search(r"in ([0-9.]+) s", stderr.split("loaded ", 1)[1]).group(1)))
            rss.append(peak)
        result[name] = {"load_seconds": statistics.median(seconds), "peak_rss_mb": statistics.median(rss),
                        "process_seconds": wall}
    return result


def report(finetuned, loaded):
    rates = finetuned["tokens_per_second"]
    print(f"\nLlama-shaped fine-tune (4 x 512, GQA 8/2, sequence {LENGTH}, batch {BATCH}), "
          f"{finetuned['threads']} thread(s), tokens/s")
    for name, rate in rates.items():
        print(f"  {name:<10}{rate:>10.0f}  host / it {rates['host'] / rate:>5.2f}  "
              f"peak RSS {finetuned['peak_rss_mb'][name]:>6.0f} MB")
    big, small = loaded["1gb"], loaded["20m"]
    print(f"\nloading a {loaded['file_mb']:.0f} MB checkpoint: {big['load_seconds']:.2f} s, peak RSS of the run "
          f"{big['peak_rss_mb']:.0f} MB ({big['peak_rss_mb'] / loaded['file_mb']:.2f}x the file); the same run on "
          f"the 20M model {small['peak_rss_mb']:.0f} MB, so loading adds "
          f"{(big['peak_rss_mb'] - small['peak_rss_mb']) / loaded['file_mb']:.2f}x the file")
    sys.stdout.flush()


def main():
    with tempfile.TemporaryDirectory() as folder:
        work = pathlib.Path(folder)
        results = {}
        for threads in sorted({1, os.cpu_count()}):
            results[f"finetune_threads_{threads}"] = finetune(work, steps=10, repeats=3, threads=threads)
        results["load"] = load(work, repeats=3)
        for threads in sorted({1, os.cpu_count()}):
            report(results[f"finetune_threads_{threads}"], results["load"])
    out = ROOT / "target" / "bench" / "pretrained.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
