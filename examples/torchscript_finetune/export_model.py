"""A user's PyTorch side of the TorchScript example.

    python export_model.py export DIR   writes DIR/model.pt (a scripted classifier),
                                        DIR/train.safetensors and DIR/eval.safetensors
    python export_model.py outputs DIR WEIGHTS
                                        loads WEIGHTS (the host's model.safetensors) into the
                                        same PyTorch module and writes the class probabilities
                                        on the evaluation data to DIR/torch_outputs.json

Needs torch and safetensors (the project's .venv has both).
"""

import json
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file


class Classifier(torch.nn.Module):
    """Features -> hidden -> classes; forward returns a dict, as many PyTorch models do."""

    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 4):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.GELU())
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.encoder(x)
        return {"logits": self.head(hidden), "hidden": hidden}


def blobs(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Four Gaussian clusters in 16 dimensions."""
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(7)) * 2
    labels = torch.randint(0, 4, (n,), generator=generator)
    return {"input": centres[labels] + torch.randn(n, 16, generator=generator), "labels": labels}


def export(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.jit.script(Classifier()).save(str(out / "model.pt"))
    generator = torch.Generator().manual_seed(1)
    save_file(blobs(512, generator), str(out / "train.safetensors"))
    save_file(blobs(128, generator), str(out / "eval.safetensors"))


def outputs(out: pathlib.Path, weights: pathlib.Path) -> None:
    model = Classifier()
    model.load_state_dict(load_file(str(weights)))  # strict: every name must match
    model.eval()
    data = load_file(str(out / "eval.safetensors"))
    with torch.no_grad():
        probabilities = model(data["input"])["logits"].softmax(-1)
    (out / "torch_outputs.json").write_text(json.dumps(probabilities.tolist()))


if __name__ == "__main__":
    command, folder = sys.argv[1], pathlib.Path(sys.argv[2])
    if command == "export":
        export(folder)
    else:
        outputs(folder, pathlib.Path(sys.argv[3]))
