"""Loads the host's output folder with transformers and scores it on the evaluation texts.

    python check_with_transformers.py output eval.jsonl

Prints the accuracy transformers measures with the fine-tuned model; it is the host's
eval_accuracy, since the folder holds the same weights, config and tokenizer.
"""

import json
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

folder, eval_file = sys.argv[1], sys.argv[2]
model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
if info["missing_keys"] or info["unexpected_keys"]:
    sys.exit(f"{folder}: missing {info['missing_keys']}, unexpected {info['unexpected_keys']}")
tokenizer = AutoTokenizer.from_pretrained(folder)
rows = [json.loads(line) for line in open(eval_file) if line.strip()]
batch = tokenizer([r["text"] for r in rows], truncation=True, max_length=32, padding=True, return_tensors="pt")
model.eval()
with torch.no_grad():
    predicted = model(**batch).logits.argmax(-1)
accuracy = (predicted == torch.tensor([r["label"] for r in rows])).float().mean().item()
print(json.dumps({"model": type(model).__name__, "labels": model.config.id2label, "accuracy": accuracy}))
