"""Contender 4: the benchmark jobs as a plain PyTorch training loop (as a user writes it:
no per-step .item(), the loss summed on the device like HF Trainer).

    python pytorch_loop.py mlp DIGITS.safetensors STEPS
    python pytorch_loop.py gpt CORPUS.jsonl TOKENIZER.json STEPS

Prints {"samples_per_second": ..., "seconds": ..., "steps": ...}. BENCH_DEVICE=cuda trains
on the GPU, BENCH_BF16=1 under bfloat16 autocast (bench/gpu_check.sh sets them). Started by
torchrun, it trains with DistributedDataParallel (Gloo on CPU, NCCL on CUDA): each rank takes
its share of every global batch of 64 x WORLD_SIZE, and rank 0 prints the rate of all ranks.
"""

import contextlib
import json
import os
import sys
import time

import torch
import torch.distributed
import torch.nn.functional as F
import torch.nn.parallel
from safetensors.torch import load_file

from models import Gpt, Mlp, addition_tokens


def batches(n, batch_size, steps, seed=42):
    order = []
    epoch = 0
    while len(order) < steps:
        permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        order.extend(permutation.split(batch_size))
        epoch += 1
    return order[:steps]


DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
BF16 = os.environ.get("BENCH_BF16") == "1"


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))


def train(model, inputs, labels, steps, batch_size, learning_rate):
    model, inputs, labels = model.to(DEVICE), inputs.to(DEVICE), labels.to(DEVICE)
    if WORLD > 1:
        torch.distributed.init_process_group("nccl" if DEVICE.type == "cuda" else "gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
    decay = [p for n, p in model.named_parameters() if "bias" not in n and "ln" not in n]
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "ln" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=learning_rate
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (steps - step) / steps))
    plan = batches(len(inputs), batch_size * WORLD, steps)
    plan = [index[RANK::WORLD].to(DEVICE) for index in plan]
    total = torch.zeros((), device=DEVICE)
    autocast = (lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16)) if BF16 else contextlib.nullcontext
    synchronize()
    started = time.perf_counter()
    for index in plan:
        x, y = inputs[index], labels[index]
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        total += loss.detach()
    synchronize()
    seconds = time.perf_counter() - started
    return {"samples_per_second": steps * batch_size * WORLD / seconds, "seconds": seconds, "steps": steps,
            "mean_loss": total.item() / steps}


def main():
    torch.manual_seed(42)
    if sys.argv[1] == "mlp":
        data = load_file(sys.argv[2])
        # BENCH_MLP_WIDTHS="64,1024,1024,1024,10" for a wider model (the scaling benchmark).
        widths = tuple(int(w) for w in os.environ.get("BENCH_MLP_WIDTHS", "64,256,256,10").split(","))
        report = train(Mlp(widths), data["input"], data["labels"], int(sys.argv[3]), 64, 2e-3)
    else:
        ids, labels, vocab = addition_tokens(sys.argv[2], sys.argv[3])
        report = train(Gpt(vocab), ids, labels, int(sys.argv[4]), 64, 3e-3)
    if RANK == 0:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
