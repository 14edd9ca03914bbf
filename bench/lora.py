"""The LoRA and gradient checkpointing benchmark of BENCHMARKS.md (bench/run.sh calls it;
run alone with `python bench/lora.py` after bench/run.sh has built the release host once).

The Llama-shaped model of bench/pretrained.py (4 layers, width 512, about 20M parameters),
sequences of 512 tokens, float32 on the CPU: full fine-tuning against LoRA (r 16, alpha 32,
all-linear), each with and without gradient checkpointing, the host against Hugging Face
Trainer (+ PEFT for LoRA; llama_finetune.py). Tokens per second over the training steps
at batch 4, medians; peak RSS of each whole run. Activation memory is what a batch adds:
(peak RSS at batch 4 - peak RSS at batch 1) / 3 per sequence, so weights, optimizer state
and the runtime cancel out.
"""

import json
import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import BENCH, PYTHON, RELEASE, ROOT, run  # noqa: E402

LENGTH, BATCH, STEPS = 512, 4, 4
CONFIGS = {"full": (False, False), "full+gc": (False, True), "lora": (True, False), "lora+gc": (True, True)}


def command(contender, folder, work, batch, lora, gc):
    if contender == "host":
        data = str(folder / "data.safetensors")
        args = [str(RELEASE / "host"), "--model-name-or-path", str(folder), "--train-file", data, "--eval-file", data,
                "--max-steps", str(STEPS), "--per-device-train-batch-size", str(batch), "--max-seq-length",
                str(LENGTH), "--learning-rate", "5e-5", "--weight-decay", "0.01", "--eval-strategy", "no",
                "--save-strategy", "no", "--logging-steps", "500", "--disable-tqdm", "--output-dir",
                str(work / "host-out")]
        args += ["--use-peft", "--lora-target-modules", "all-linear"] if lora else []
        return args + (["--gradient-checkpointing"] if gc else []), {}
    env = {"BENCH_LORA": "1" if lora else "0", "BENCH_GC": "1" if gc else "0"}
    return [str(PYTHON), str(BENCH / "llama_finetune.py"), "hf", str(folder), str(STEPS), str(batch),
            str(work / "hf-out")], env


def measure(work, threads, repeats):
    folder = work / "llama-20m-512"
    if not folder.exists():
        run([str(PYTHON), str(BENCH / "llama_folder.py"), str(folder), "--examples", "32", "--length", str(LENGTH)],
            os.environ, work)
    base = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), RUST_LOG="warn")
    tokens = STEPS * BATCH * LENGTH
    runs = [(c, name, b) for name in CONFIGS for c in ("host", "hf") for b in (1, BATCH)]
    rates, peaks = {}, {}
    for repeat in range(repeats):
        for contender, name, batch in runs[repeat % 2:] + runs[:repeat % 2]:
            lora, gc = CONFIGS[name]
            args, extra = command(contender, folder, work, batch, lora, gc)
            stdout, _, _, rss = run(args, dict(base, **extra), work)
            key = f"{contender} {name}"
            peaks.setdefault(f"{key} batch {batch}", []).append(rss)
            if batch == BATCH:
                if contender == "host":
                    seconds = json.loads((work / "host-out" / "all_results.json").read_text())["train_runtime"]
                    rate = tokens / seconds
                else:
                    rate = json.loads(stdout.strip().splitlines()[-1])["tokens_per_second"]
                rates.setdefault(key, []).append(rate)
    peak = {k: min(v) for k, v in peaks.items()}
    activations = {key: (peak[f"{key} batch {BATCH}"] - peak[f"{key} batch 1"]) / (BATCH - 1) for key in rates}
    return {"threads": threads, "tokens_per_second": {k: statistics.median(v) for k, v in rates.items()},
            "all": rates, "peak_rss_mb": peak, "activation_mb_per_sequence": activations}


def report(result):
    rates, peak, act = result["tokens_per_second"], result["peak_rss_mb"], result["activation_mb_per_sequence"]
    print(f"\nLlama-shaped (4 x 512) at sequence {LENGTH}, batch {BATCH}, {result['threads']} thread(s)")
    print(f"  {'':<18}{'tokens/s':>10}{'host/HF':>9}{'peak RSS MB':>13}{'activations MB/seq':>20}")
    for name in CONFIGS:
        for contender in ("host", "hf"):
            key = f"{contender} {name}"
            ratio = rates[key] / rates[f"hf {name}"]
            print(f"  {key:<18}{rates[key]:>10.0f}{ratio:>9.2f}{peak[f'{key} batch {BATCH}']:>13.0f}{act[key]:>20.1f}")
    for contender in ("host", "hf"):
        for name in ("full", "lora"):
            cut = 1 - act[f"{contender} {name}+gc"] / act[f"{contender} {name}"]
            print(f"  {contender} {name}: gradient checkpointing cuts activation memory by {100 * cut:.0f}%")
    sys.stdout.flush()


def main():
    with tempfile.TemporaryDirectory() as folder:
        work = pathlib.Path(folder)
        results = {f"threads_{t}": measure(work, t, repeats=2) for t in sorted({os.cpu_count()})}
        for result in results.values():
            report(result)
    out = ROOT / "target" / "bench" / "lora.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
