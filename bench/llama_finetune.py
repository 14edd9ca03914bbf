"""The pretrained fine-tuning benchmark's Python contenders, on a folder from
llama_folder.py: transformers' LlamaForCausalLM trained by Hugging Face Trainer, or by a
plain PyTorch loop (AdamW with HF's weight-decay groups, clipping at 1.0, linear decay).

    python llama_finetune.py hf|loop DIR STEPS BATCH OUTPUT_DIR

Prints {"tokens_per_second": ..., "seconds": ..., "steps": ...} over the training steps
alone (Trainer's train_runtime; the loop's own timing), as the host's train_runtime.
BENCH_DEVICE=cuda trains the loop on the GPU, BENCH_BF16=1 under bfloat16 autocast
(bench/gpu_check.sh sets them where transformers is installed). BENCH_LORA=1 trains a PEFT
LoRA adapter instead (r 16, alpha 32, dropout 0.05, all-linear, as the host's defaults),
BENCH_GC=1 with gradient checkpointing (non-reentrant, which needs no input gradients).
"""

import contextlib
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments


class Rows(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i]}


def main():
    kind, folder, steps, batch, output = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.manual_seed(42)
    ids = load_file(f"{folder}/data.safetensors")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokens = steps * batch * ids.shape[1]
    checkpointing = os.environ.get("BENCH_GC") == "1"
    if os.environ.get("BENCH_LORA") == "1":
        from peft import LoraConfig, get_peft_model
        config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    if kind == "hf":
        args = TrainingArguments(output_dir=output, max_steps=steps, per_device_train_batch_size=batch,
                                 learning_rate=5e-5, weight_decay=0.01, logging_steps=500, save_strategy="no",
                                 eval_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=42,
                                 gradient_checkpointing=checkpointing,
                                 gradient_checkpointing_kwargs={"use_reentrant": False})
        seconds = Trainer(model=model, args=args, train_dataset=Rows(ids)).train().metrics["train_runtime"]
    else:
        device = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
        model, ids = model.to(device), ids.to(device)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        bf16 = os.environ.get("BENCH_BF16") == "1"
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decay = [p for n, p in trained if "bias" not in n and "norm" not in n]
        rest = [p for n, p in trained if "bias" in n or "norm" in n]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                      lr=5e-5)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (steps - step) / steps))
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(ids))
        for step in range(steps):
            index = order[(step * batch) % len(ids):][:batch]
            with autocast():
                loss = model(input_ids=ids[index.to(device)], labels=ids[index.to(device)]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trained], 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    print(json.dumps({"tokens_per_second": tokens / seconds, "seconds": seconds, "steps": steps}))


if __name__ == "__main__":
    main()
