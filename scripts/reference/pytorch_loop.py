"""The host's default job written as a plain PyTorch loop: the reference the fidelity test
compares the host with, step by step.

    .venv/bin/python scripts/reference/pytorch_loop.py SPEC.json OUT.json

SPEC.json names the initial weights (safetensors, the host's parameter names), the
training examples (safetensors: input, labels), the batches (example indices, one list per
optimizer step) and the hyperparameters. OUT.json gets the loss of every step.
"""
import json
import pathlib
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

# The host's models in PyTorch live with the benchmark (bench/models.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
from models import Mlp  # noqa: E402


def main():
    spec = json.load(open(sys.argv[1]))
    data = load_file(spec["train"])
    inputs, labels = data["input"], data["labels"]
    model = Mlp(spec["widths"])
    model.load_state_dict(load_file(spec["init_weights"]))
    # Hugging Face Trainer's groups: no weight decay for biases.
    decay = [p for n, p in model.named_parameters() if "bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if "bias" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec["learning_rate"], betas=(spec["adam_beta1"], spec["adam_beta2"]), eps=spec["adam_epsilon"],
    )
    total = len(spec["batches"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, (total - step) / max(1, total)))
    losses = []
    for batch in spec["batches"]:
        index = torch.tensor(batch)
        x, y = inputs[index], labels[index]
        loss = F.cross_entropy(model(x), y, reduction="sum", ignore_index=-100) / (y != -100).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    json.dump({"losses": losses}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
