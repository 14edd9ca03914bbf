"""What one training step asks of libtorch: the host beside Hugging Face Trainer.

    python bench/op_count.py [--host PATH] [--steps-counted N]

On a tiny Llama (llama_folder.py --size probe: 2 layers, width 64, GQA 4/2, vocabulary
256; batch 4 of 32 tokens, AdamW, clipping at 1.0, linear decay, float32 on the CPU) it
counts the ATen operators dispatched and the bytes allocated in optimizer step 3, from the
first forward pass through the zeroing of the gradients: the host through HOST_OP_COUNT
(libtorch's RecordFunction callbacks and allocator reports), Trainer under torch.profiler
(the same callbacks; profile_memory) between its on_step_begin and on_step_end, with its
default optimizer (adamw_torch) and with adamw_torch_fused. Every operator call counts,
nested ones included, as the profiler lists them. Prints a table and the operators where the
counts differ most; --json writes the counts.
"""

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = ROOT / ".venv" / "bin" / "python"
STEP, BATCH, LENGTH = 3, 4, 32


def host_count(host, folder, work):
    out = work / "host-ops.json"
    data = str(folder / "data.safetensors")
    command = [str(host), "--model-name-or-path", str(folder), "--train-file", data, "--max-steps", str(STEP),
               "--per-device-train-batch-size", str(BATCH), "--max-seq-length", str(LENGTH), "--learning-rate", "5e-5",
               "--weight-decay", "0.01", "--eval-strategy", "no", "--save-strategy", "no", "--logging-steps", "500",
               "--disable-tqdm", "--output-dir", str(work / "host-out")]
    env = dict(os.environ, HOST_OP_COUNT=str(out), HOST_OP_COUNT_STEP=str(STEP), RUST_LOG="warn")
    subprocess.run(command, env=env, check=True, cwd=work, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    return {"ops": collections.Counter(report["ops"]), "bytes": report["bytes_allocated"],
            "allocations": report["allocations"]}


def trainer_count(folder, work, optim):
    """Runs in a child process: one Trainer per process, as a user runs it."""
    out = work / f"hf-{optim}.json"
    subprocess.run([str(PYTHON), __file__, "--trainer-child", str(folder), str(out), optim], check=True, cwd=work,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    return {"ops": collections.Counter(report["ops"]), "bytes": report["bytes"], "allocations": report["allocations"]}


def trainer_child(folder, out, optim):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    ids = load_file(f"{folder}/data.safetensors")["input_ids"][:, :LENGTH]

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i]), "labels": ids[i]}

    class Probe(TrainerCallback):
        profiler = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == STEP:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                       profile_memory=True)
                self.profiler.start()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is None:
                return
            self.profiler.stop()
            events = self.profiler.profiler.kineto_results.events()
            ops = collections.Counter(e.name() for e in events if e.name() != "[memory]")
            sizes = [e.nbytes() for e in events if e.name() == "[memory]" and e.nbytes() > 0]
            pathlib.Path(out).write_text(json.dumps({"ops": ops, "bytes": sum(sizes), "allocations": len(sizes)}))
            self.profiler = None

    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(pathlib.Path(out).parent / f"hf-{optim}"), max_steps=STEP,
                             per_device_train_batch_size=BATCH, learning_rate=5e-5, weight_decay=0.01,
                             logging_steps=500, save_strategy="no", eval_strategy="no", report_to=[],
                             disable_tqdm=True, use_cpu=True, seed=42, optim=optim, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[Probe()]).train()


def aten(counter):
    return sum(n for name, n in counter.items() if name.startswith("aten::"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", type=pathlib.Path,
                        default=next((p for p in [ROOT / "target/release/host", ROOT / "target/debug/host"]
                                      if p.exists()), ROOT / "target/release/host"))
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--trainer-child", nargs=3, metavar=("FOLDER", "OUT", "OPTIM"))
    args = parser.parse_args()
    if args.trainer_child:
        return trainer_child(*args.trainer_child)
    args.host = args.host.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        folder = work / "llama-probe"
        subprocess.run([str(PYTHON), str(BENCH / "llama_folder.py"), str(folder), "--size", "probe", "--examples",
                        "64", "--length", str(LENGTH)], check=True, stdout=subprocess.DEVNULL)
        counts = {"host": host_count(args.host, folder, work),
                  "hf (adamw_torch)": trainer_count(folder, work, "adamw_torch"),
                  "hf (adamw_torch_fused)": trainer_count(folder, work, "adamw_torch_fused")}
    host = aten(counts["host"]["ops"])
    print(f"One optimizer step (step {STEP}), tiny Llama, batch {BATCH} x {LENGTH} tokens, float32 on the CPU:\n")
    print(f"| contender | ATen ops | host / it | allocations | MB allocated |")
    print(f"| --- | ---: | ---: | ---: | ---: |")
    for name, count in counts.items():
        ops = aten(count["ops"])
        print(f"| {name} | {ops} | {host / ops:.2f} | {count['allocations']} | {count['bytes'] / 1e6:.1f} |")
    theirs = counts["hf (adamw_torch_fused)"]["ops"]
    ours = counts["host"]["ops"]
    names = {n for n in list(theirs) + list(ours) if n.startswith("aten::")}
    print(f"\nOperators where host and hf (adamw_torch_fused) differ most (calls):\n")
    print("| operator | host | hf |")
    print("| --- | ---: | ---: |")
    for name in sorted(names, key=lambda n: -abs(ours[n] - theirs[n]))[:args.top]:
        print(f"| {name} | {ours[name]} | {theirs[name]} |")
    if args.json:
        args.json.write_text(json.dumps({k: {**v, "ops": dict(v["ops"])} for k, v in counts.items()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
