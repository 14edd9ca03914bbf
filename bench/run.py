"""Runs the benchmarks of BENCHMARKS.md side by side and prints the table (bench/run.sh
builds everything first and calls this).

Contenders, on the same data, model, hyperparameters, batches per step and threads:
  host+plugins  the host with the weighted_ce loss and stock callbacks
  host          the host, built-in loss, no plugins
  tch           the same loop written directly against tch (bench/src/bin/tch_loop.rs)
  pytorch       a plain PyTorch loop (bench/pytorch_loop.py)
  hf            Hugging Face Trainer (bench/hf_trainer.py)
Runs are interleaved (the order rotates every repeat) and repeated; medians are reported.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH = ROOT / "bench"


def run(command, env, cwd):
    """Runs a command; returns (stdout, stderr, wall seconds, peak RSS in MB). The peak is
    the kernel's count for this child alone (wait4), so one run gives time and memory."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark command failed ({os.waitstatus_to_exitcode(status)}): "
                 f"{' '.join(map(str, command))}\n{stderr[-3000:]}")
    return stdout, stderr, wall, usage.ru_maxrss / 1024


def host_command(task, steps, output, plugins, files):
    # One evaluation after training (do_eval, outside train_runtime) keeps the 80% training
    # split the other contenders train on; with nothing evaluated the host would train on all.
    command = [str(RELEASE / "host"), "--max-steps", str(steps), "--eval-strategy", "no", "--do-eval", "true",
               "--save-strategy", "no", "--logging-steps", "500", "--disable-tqdm", "--output-dir", str(output)]
    if task == "gpt":
        command += ["--config", str(ROOT / "examples/gpt_addition/job.toml"), "--train-file", files["corpus"],
                    "--eval-file", files["corpus"], "--tokenizer-file", files["tokenizer"],
                    "--load-best-model-at-end", "false", "--save-total-limit", "1"]
    if plugins:
        command += ["--plugin", str(RELEASE / "libweighted_ce.so")]
        for callback in ("csv_logger", "throughput", "timer"):
            command += ["--plugin", str(RELEASE / f"lib{callback}.so")]
        command += ["--plugin-config", "timer.max_seconds=100000"]
    return command


def contenders(task, steps, work, files):
    """name -> (command, how to read samples/s from its run)."""
    def host_rate(output):
        def rate(stdout):
            results = json.loads((output / "all_results.json").read_text())
            return steps * 64 / results["train_runtime"]
        return rate

    def printed(stdout):
        return json.loads(stdout.strip().splitlines()[-1])["samples_per_second"]

    table = {}
    for name, plugins in (("host+plugins", True), ("host", False)):
        output = work / f"{name}-{task}"
        table[name] = (host_command(task, steps, output, plugins, files), host_rate(output))
    if task == "mlp":
        table["tch"] = ([str(RELEASE / "tch_loop"), str(steps)], printed)
        table["pytorch"] = ([str(PYTHON), str(BENCH / "pytorch_loop.py"), "mlp", files["digits"], str(steps)], printed)
        table["hf"] = ([str(PYTHON), str(BENCH / "hf_trainer.py"), "mlp", files["digits"], str(steps), str(work / "hf")],
                       printed)
    else:
        table["pytorch"] = ([str(PYTHON), str(BENCH / "pytorch_loop.py"), "gpt", files["corpus"], files["tokenizer"],
                             str(steps)], printed)
        table["hf"] = ([str(PYTHON), str(BENCH / "hf_trainer.py"), "gpt", files["corpus"], files["tokenizer"],
                        str(steps), str(work / "hf")], printed)
    return table


def throughput(task, steps, repeats, threads, work, files):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), RUST_LOG="warn")
    table = contenders(task, steps, work, files)
    names = list(table)
    rates = {name: [] for name in names}
    peak = {name: 0.0 for name in names}
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            command, read = table[name]
            stdout, _, _, rss = run(command, env, work)
            rates[name].append(read(stdout))
            peak[name] = max(peak[name], rss)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    # Startup to the end of the first step: a one-step run, whole process.
    startup = {}
    for name in names:
        command = [part if part != str(steps) else "1" for part in table[name][0]]
        startup[name] = statistics.median(run(command, env, work)[2] for _ in range(3))
    return {"samples_per_second": medians, "all": rates, "peak_rss_mb": peak, "startup_seconds": startup}


def scaling(steps, repeats, work, files, hidden=256, layers=2):
    """Data parallel on CPU: an MLP on the digits (batch 64 per rank), one thread per rank,
    as one plain process, one rank through c10d, and two ranks; the host (host launch)
    beside PyTorch DDP (torchrun). Rates count the samples of all ranks."""
    widths = ",".join(["64"] + [str(hidden)] * layers + ["10"])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RUST_LOG="warn", BENCH_MLP_WIDTHS=widths)

    def host_rate(output):
        return lambda stdout: json.loads((output / "all_results.json").read_text())["train_samples_per_second"]

    def printed(stdout):
        return json.loads(stdout.strip().splitlines()[-1])["samples_per_second"]

    torchrun = [str(PYTHON), "-m", "torch.distributed.run", "--standalone"]
    loop = [str(BENCH / "pytorch_loop.py"), "mlp", files["digits"], str(steps)]
    table = {}
    for name, launcher in (("host", []), ("host 1 rank", ["1"]), ("host 2 ranks", ["2"])):
        output = work / f"scaling-{len(table)}"
        command = host_command("mlp", steps, output, False, files)
        command += ["--hidden-size", str(hidden), "--num-hidden-layers", str(layers)]
        if launcher:
            command = [command[0], "launch", "--nproc-per-node", launcher[0], "--"] + command[1:]
        table[name] = (command, host_rate(output))
    table["pytorch"] = ([str(PYTHON)] + loop, printed)
    table["pytorch 1 rank"] = (torchrun + ["--nproc-per-node", "1"] + loop, printed)
    table["pytorch 2 ranks"] = (torchrun + ["--nproc-per-node", "2"] + loop, printed)
    names = list(table)
    rates = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            command, read = table[name]
            stdout, _, _, _ = run(command, env, work)
            rates[name].append(read(stdout))
    return {"widths": widths, "samples_per_second": {name: statistics.median(v) for name, v in rates.items()},
            "all": rates}


def report_scaling(result):
    print(f"\ndata parallel on CPU, MLP {result['widths']}, batch 64 per rank, 1 thread per rank, "
          "samples/s of all ranks")
    rates = result["samples_per_second"]
    for name, rate in rates.items():
        ranks = 2 if name.endswith("2 ranks") else 1
        print(f"  {name:<16}{rate:>10.0f}  per rank {rate / ranks:>8.0f}")
    for who in ("host", "pytorch"):
        print(f"  {who}: 1 rank through c10d / plain {rates[who + ' 1 rank'] / rates[who]:.2f}, "
              f"2 ranks / plain {rates[who + ' 2 ranks'] / rates[who]:.2f}")
    print(f"  host 2 ranks / PyTorch DDP 2 ranks {rates['host 2 ranks'] / rates['pytorch 2 ranks']:.2f}")
    sys.stdout.flush()


def checkpoint_speed(work):
    """Saves one checkpoint of a 100M-parameter MLP (64-4096x7-10) and reads the host's
    own report of it; torch.save of the same state (model and AdamW moments) for scale."""
    env = dict(os.environ, RUST_LOG="info")
    command = [str(RELEASE / "host"), "--hidden-size", "4096", "--num-hidden-layers", "7", "--max-steps", "1",
               "--save-steps", "1", "--eval-strategy", "no", "--disable-tqdm", "--output-dir", str(work / "big"),
               "--per-device-train-batch-size", "8"]
    _, stderr, _, _ = run(command, env, work)
    line = next(l for l in stderr.splitlines() if "saved " in l and "MB/s" in l)
    inside = line[line.index("(") + 1:line.index(")")]
    megabytes, rest = inside.split(" MB in ")
    seconds = float(rest.split(" s,")[0])
    torch_script = f"""
import time, torch
layers = [torch.nn.Linear(64, 4096), torch.nn.ReLU()]
for _ in range(6): layers += [torch.nn.Linear(4096, 4096), torch.nn.ReLU()]
model = torch.nn.Sequential(*layers, torch.nn.Linear(4096, 10))
optimizer = torch.optim.AdamW(model.parameters())
model(torch.randn(8, 64)).sum().backward(); optimizer.step()
started = time.perf_counter()
torch.save({{"model": model.state_dict(), "optimizer": optimizer.state_dict()}}, "{work / 'torch_checkpoint.pt'}")
import os; os.sync()
print(time.perf_counter() - started)
"""
    torch_seconds = float(subprocess.run([str(PYTHON), "-c", torch_script], capture_output=True, text=True,
                                         check=True).stdout.strip())
    return {"megabytes": float(megabytes), "host_seconds": seconds, "host_mb_per_second": float(megabytes) / seconds,
            "torch_save_seconds": torch_seconds}


def main():
    parser = argparse.ArgumentParser(description="host benchmarks (see BENCHMARKS.md)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per MLP run")
    parser.add_argument("--gpt-steps", type=int, default=300, help="optimizer steps per GPT run")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "target" / "bench" / "results.json")
    args = parser.parse_args()
    all_threads = os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        work = pathlib.Path(folder)
        files = {"digits": str(work / "digits.safetensors"), "tokenizer": str(ROOT / "examples/gpt_addition/tokenizer.json"),
                 "corpus": str(work / "corpus/train.jsonl")}
        subprocess.run([str(RELEASE / "tch_loop"), "--export", files["digits"]], check=True)
        subprocess.run([sys.executable, str(ROOT / "examples/gpt_addition/make_corpus.py"), "--limit", "100",
                        "--out", str(work / "corpus")], check=True, stdout=subprocess.DEVNULL)
        results = {"cpu_count": all_threads, "repeats": args.repeats}
        for threads in sorted({1, all_threads}):
            results[f"mlp_threads_{threads}"] = throughput("mlp", args.steps, args.repeats, threads, work, files)
            report(f"digits MLP, {threads} thread(s), samples/s", results[f"mlp_threads_{threads}"])
        results["gpt"] = throughput("gpt", args.gpt_steps, args.repeats, all_threads, work, files)
        report(f"GPT (2 x 128, context 16), {all_threads} threads, samples/s", results["gpt"])
        results["scaling"] = scaling(args.steps, args.repeats, work, files)
        report_scaling(results["scaling"])
        results["scaling_wide"] = scaling(args.steps // 5, args.repeats, work, files, hidden=1024, layers=3)
        report_scaling(results["scaling_wide"])
        results["checkpoint_100m"] = checkpoint_speed(work)
        overhead = subprocess.run([str(RELEASE / "plugin_overhead"), str(RELEASE)], capture_output=True, text=True,
                                  check=True)
        results["plugin_overhead"] = json.loads(overhead.stdout)
    print("checkpoint of a 100M-parameter model:", json.dumps(results["checkpoint_100m"]))
    print("plugin overhead (microseconds):", json.dumps(results["plugin_overhead"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"results: {args.out}")


def report(title, result):
    rates = result["samples_per_second"]
    base = rates["host+plugins"]
    print(f"\n{title}")
    print(f"  {'contender':<14}{'median':>12}{'host+plugins / it':>20}{'peak RSS MB':>14}{'startup s':>11}")
    for name, rate in rates.items():
        print(f"  {name:<14}{rate:>12.0f}{base / rate:>20.2f}{result['peak_rss_mb'][name]:>14.0f}"
              f"{result['startup_seconds'][name]:>11.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
