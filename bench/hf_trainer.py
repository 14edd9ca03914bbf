"""Contender 5: the benchmark jobs with Hugging Face Trainer (same model code as the
PyTorch loop, wrapped to return its loss as Trainer expects).

    python hf_trainer.py mlp DIGITS.safetensors STEPS OUTPUT_DIR
    python hf_trainer.py gpt CORPUS.jsonl TOKENIZER.json STEPS OUTPUT_DIR

Prints {"samples_per_second": ..., "seconds": ..., "steps": ...} (Trainer's train_runtime).
"""

import json
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from models import Gpt, Mlp, addition_tokens


class WithLoss(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input, labels):
        logits = self.model(input)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return {"loss": loss, "logits": logits}


class Rows(torch.utils.data.Dataset):
    def __init__(self, inputs, labels):
        self.inputs, self.labels = inputs, labels

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return {"input": self.inputs[i], "labels": self.labels[i]}


def main():
    torch.manual_seed(42)
    if sys.argv[1] == "mlp":
        data = load_file(sys.argv[2])
        model, inputs, labels, learning_rate = Mlp(), data["input"], data["labels"], 2e-3
        steps, output = int(sys.argv[3]), sys.argv[4]
    else:
        inputs, labels, vocab = addition_tokens(sys.argv[2], sys.argv[3])
        model, learning_rate = Gpt(vocab), 3e-3
        steps, output = int(sys.argv[4]), sys.argv[5]
    args = TrainingArguments(
        output_dir=output, max_steps=steps, per_device_train_batch_size=64, learning_rate=learning_rate,
        weight_decay=0.01, logging_steps=500, save_strategy="no", eval_strategy="no", report_to=[],
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=42,
    )
    trainer = Trainer(model=WithLoss(model), args=args, train_dataset=Rows(inputs, labels))
    metrics = trainer.train().metrics
    seconds = metrics["train_runtime"]
    print(json.dumps({"samples_per_second": steps * 64 / seconds, "seconds": seconds, "steps": steps,
                      "mean_loss": metrics["train_loss"]}))


if __name__ == "__main__":
    main()
