"""TRL's SFTTrainer as the oracle for chat and prompt-completion data (tests/e2e/sft.rs).

    python sft_oracle.py make BASE_MODEL OUT_DIR
        OUT_DIR/model: BASE_MODEL (a tiny random causal LM of hf_oracle.py) with a chat
        template that marks the assistant's turns with {% generation %}; OUT_DIR/chat.jsonl
        (multi-turn messages), pc_text.jsonl (prompt-completion text) and pc_chat.jsonl
        (prompt-completion message lists).
    python sft_oracle.py loss MODEL DATA ASSISTANT_ONLY COMPLETION_ONLY MAX_LENGTH
        prints {"eval_loss": ..., "examples": ..., "learned": ...}: TRL's prepared data
        (SFTTrainer's train_dataset) in one right-padded batch through the model, the loss
        transformers computes on it, as Trainer's eval_loss of that one batch.
"""

import json
import random
import shutil
import sys
import tempfile

import torch

# A Zephyr-like template: each turn <|role|>, the content, the end-of-text token; the
# assistant's content and end token inside {% generation %}.
TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

WORDS = "the cat sat on a mat and dog ran to big red ball hello world is good day".split()


def words(rng, low, high):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def make(base, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = TEMPLATE
    model.save_pretrained(f"{out}/model")
    tokenizer.save_pretrained(f"{out}/model")
    rng = random.Random(11)
    with open(f"{out}/chat.jsonl", "w") as f:
        for _ in range(6):
            turns = [{"role": "system", "content": words(rng, 2, 4)}] if rng.random() < 0.5 else []
            for _ in range(rng.randint(1, 2)):
                turns += [{"role": "user", "content": words(rng, 2, 8)},
                          {"role": "assistant", "content": words(rng, 1, 6)}]
            f.write(json.dumps({"messages": turns}) + "\n")
    with open(f"{out}/pc_text.jsonl", "w") as f:
        for _ in range(6):
            f.write(json.dumps({"prompt": words(rng, 2, 8) + " :", "completion": " " + words(rng, 1, 6)}) + "\n")
    with open(f"{out}/pc_chat.jsonl", "w") as f:
        for _ in range(6):
            prompt = [{"role": "user", "content": words(rng, 2, 8)}]
            f.write(json.dumps({"prompt": prompt, "completion": [{"role": "assistant", "content": words(rng, 1, 6)}]})
                    + "\n")


def loss(model_dir, data, assistant_only, completion_only, max_length):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    with open(data) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(output_dir=tmp, report_to=[], use_cpu=True, max_length=int(max_length),
                           assistant_only_loss=assistant_only == "true",
                           completion_only_loss=completion_only == "true", packing=False, shuffle_dataset=False)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer)
        prepared = trainer.train_dataset
    longest = max(len(ids) for ids in prepared["input_ids"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([row + [pad] * (longest - len(row)) for row in prepared["input_ids"]])
    labels = torch.tensor([row + [-100] * (longest - len(row)) for row in prepared["labels"]])
    mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in prepared["input_ids"]])
    with torch.no_grad():
        value = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    learned = int((labels[:, 1:] != -100).sum())
    print(json.dumps({"eval_loss": value, "examples": len(prepared), "learned": learned}))


if __name__ == "__main__":
    command, arguments = sys.argv[1], sys.argv[2:]
    {"make": make, "loss": loss}[command](*arguments)
