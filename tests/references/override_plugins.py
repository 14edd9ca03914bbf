"""Oracles for the stock plugins of the kinds added in plugin-api 1.6, run by
tests/e2e/override_plugins.rs in the project venv. Each subcommand recomputes what a
plugin produced with the reference library and exits non-zero, naming the difference,
when they disagree.

  report PREDICTIONS REPORT METRICS K...   classification_report vs scikit-learn
  muon DIR                                 muon vs torch.optim.Muon + torch.optim.AdamW
  one_cycle LOG MAX_STEPS MAX_LR CONFIG    one_cycle's logged rates vs OneCycleLR
  mixup DIR                                mixup/cutmix vs torchvision.transforms.v2
  digits DIR                               writes the digits as train/eval.safetensors
  resnet DIR                               resnet's predictions vs torchvision's blocks
"""

import json
import math
import sys

import numpy as np
import torch
from safetensors.torch import load_file


def fail(message):
    print(message)
    sys.exit(1)


def close(name, got, want, tol):
    if isinstance(want, dict):
        if set(got) != set(want):
            fail(f"{name}: keys {sorted(got)} != {sorted(want)}")
        for key in want:
            close(f"{name}.{key}", got[key], want[key], tol)
        return
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        fail(f"{name}: shape {got.shape} != {want.shape}")
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not diff <= tol:
        fail(f"{name}: differs by {diff} (tolerance {tol})\n got {got}\nwant {want}")


def report(predictions, report_path, metrics_path, *ks):
    from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

    rows = [json.loads(line) for line in open(predictions)]
    y_true = np.array([r["label"] for r in rows])
    scores = np.array([r["probabilities"] for r in rows])
    y_pred = scores.argmax(1)
    got = json.load(open(report_path))
    labels = sorted(set(y_true) | set(y_pred))
    if got["labels"] != [int(l) for l in labels]:
        fail(f"labels {got['labels']} != {labels}")
    want = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    close("classification_report", got["classification_report"], want, 1e-12)
    close("confusion_matrix", got["confusion_matrix"], confusion_matrix(y_true, y_pred), 0)
    classes = np.arange(scores.shape[1])
    metrics = json.loads(open(metrics_path).read())
    for k in ks:
        want_k = top_k_accuracy_score(y_true, scores, k=int(k), labels=classes)
        close(f"top_{k}_accuracy (report)", got["top_k_accuracy"][k], want_k, 1e-12)
        close(f"test_top_{k}_accuracy", metrics[f"test_top_{k}_accuracy"], want_k, 1e-12)
    avg = want["macro avg"]
    for name, value in [
        ("test_accuracy", want["accuracy"]),
        ("test_macro_precision", avg["precision"]),
        ("test_macro_recall", avg["recall"]),
        ("test_macro_f1", avg["f1-score"]),
        ("test_weighted_f1", want["weighted avg"]["f1-score"]),
    ]:
        close(name, metrics[name], value, 1e-12)
    print(f"classification_report equals scikit-learn over {len(rows)} predictions")


def muon(folder):
    case = load_file(f"{folder}/case.safetensors")
    host = load_file(f"{folder}/host.safetensors")
    config = json.load(open(f"{folder}/case.json"))
    names = config["names"]
    params = {n: torch.nn.Parameter(case[f"init.{n}"].clone()) for n in names}
    matrices = [n for n in names if params[n].ndim == 2]
    others = [n for n in names if params[n].ndim != 2]
    decay = config["weight_decay"]
    groups = lambda chosen: [
        {"params": [params[n] for n in chosen if decay[n] > 0], "weight_decay": config["decay"]},
        {"params": [params[n] for n in chosen if decay[n] == 0], "weight_decay": 0.0},
    ]
    optimizers = [
        torch.optim.Muon(groups(matrices), lr=config["lrs"][0], momentum=0.95, nesterov=True),
        torch.optim.AdamW(groups(others), lr=config["lrs"][0], betas=(0.9, 0.999), eps=1e-8),
    ]
    for step, lr in enumerate(config["lrs"]):
        for n in names:
            params[n].grad = case[f"grad{step}.{n}"].clone()
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
    worst = 0.0
    for n in names:
        diff = (params[n].detach() - host[n]).abs().max().item()
        worst = max(worst, diff)
        # Muon's Newton-Schulz runs in bfloat16. The plugin sums each product in float32
        # and rounds once, as PyTorch's bfloat16 addmm does, and matches it to 3e-8 on a
        # CPU with bfloat16 units; on another CPU PyTorch's kernel may sum in another order
        # and round one element to the neighbouring bfloat16 (0.4%), which moves a matrix
        # by about 2e-5. AdamW's parameters are float32 throughout.
        tolerance = 1e-4 if n in matrices else 1e-6
        if not diff <= tolerance:
            fail(f"muon: {n} differs from torch by {diff} after {len(config['lrs'])} steps (tolerance {tolerance})")
    print(f"muon equals torch.optim.Muon + AdamW over {len(config['lrs'])} steps (largest difference {worst:.2e})")


def one_cycle(log, max_steps, max_lr, config):
    max_steps, max_lr, config = int(max_steps), float(max_lr), json.loads(config)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=max_steps, cycle_momentum=False, **config
    )
    want = []
    for _ in range(max_steps):
        want.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    got = [entry["learning_rate"] for entry in map(json.loads, open(log)) if "loss" in entry]
    close("one_cycle learning rates", got, want, 1e-12 * max_lr)
    print(f"one_cycle equals OneCycleLR over {max_steps} steps")


def mixup(folder):
    from torchvision.transforms import v2

    case = json.load(open(f"{folder}/case.json"))
    batch = load_file(f"{folder}/batch.safetensors")
    for mode, transform in [("mixup", v2.MixUp), ("cutmix", v2.CutMix)]:
        host = load_file(f"{folder}/{mode}.safetensors")
        torch.manual_seed(case["seed"])
        images = batch["input"].reshape(-1, 1, 8, 8)
        images, labels = transform(alpha=case["alpha"], num_classes=case["num_classes"])(images, batch["labels"])
        close(f"{mode} input", host["input"].numpy(), images.reshape(len(images), -1).numpy(), 1e-6)
        close(f"{mode} labels", host["labels"].numpy(), labels.numpy(), 1e-6)
    print("mixup and cutmix equal torchvision's MixUp and CutMix")




def digits(folder):
    """The digits as training and evaluation files (scikit-learn's copy, scaled to [0, 1])."""
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.data / 16.0, dtype=torch.float32)
    labels = torch.tensor(data.target, dtype=torch.int64)
    save_file({"input": images[:1400].contiguous(), "labels": labels[:1400].contiguous()}, f"{folder}/train.safetensors")
    save_file({"input": images[1400:].contiguous(), "labels": labels[1400:].contiguous()}, f"{folder}/eval.safetensors")


class SmallResNet(torch.nn.Module):
    """The resnet plugin's architecture from torchvision's BasicBlock."""

    def __init__(self, widths, classes):
        from torchvision.models.resnet import BasicBlock, conv1x1

        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(widths[0])
        channels = widths[0]
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1 or channels != width:
                downsample = torch.nn.Sequential(conv1x1(channels, width, stride), torch.nn.BatchNorm2d(width))
            setattr(self, f"layer{stage + 1}", torch.nn.Sequential(BasicBlock(channels, width, stride, downsample)))
            channels = width
        self.stages = len(widths)
        self.fc = torch.nn.Linear(channels, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x.reshape(-1, 1, 8, 8))))
        for stage in range(self.stages):
            x = getattr(self, f"layer{stage + 1}")(x)
        return self.fc(x.mean((2, 3)))


def resnet(folder):
    """The trained model's predictions against the same weights in torchvision's blocks."""
    weights = load_file(f"{folder}/output/model.safetensors")
    model = SmallResNet([16, 32], 10).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not m.endswith("num_batches_tracked") for m in missing):
        fail(f"weights do not fit torchvision's names: missing {missing}, unexpected {unexpected}")
    data = load_file(f"{folder}/eval.safetensors")
    with torch.no_grad():
        want = torch.softmax(model(data["input"]), -1).numpy()
    rows = [json.loads(line) for line in open(f"{folder}/output/predictions.jsonl")]
    close("resnet probabilities", np.array([r["probabilities"] for r in rows]), want, 1e-5)
    accuracy = float((want.argmax(1) == data["labels"].numpy()).mean())
    print(f"resnet equals the torchvision-built module on {len(rows)} images (accuracy {accuracy:.3f})")


if __name__ == "__main__":
    commands = {"report": report, "muon": muon, "one_cycle": one_cycle, "mixup": mixup, "digits": digits, "resnet": resnet}
    commands[sys.argv[1]](*sys.argv[2:])
