"""transformers' generate as the oracle for `host generate` (tests/e2e/sft.rs).

    python generate_oracle.py sample MODEL PROMPT_IDS SEED TEMPERATURE TOP_K TOP_P MAX_NEW
        prints {"generated_ids": [...]}: torch.manual_seed(SEED), then model.generate with
        do_sample=True and those settings from PROMPT_IDS (comma-separated).
    python generate_oracle.py chat MODEL TEXT
        prints {"prompt_ids": [...]}: the tokenizer's apply_chat_template of one user
        message with its generation prompt.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def sample(model_dir, prompt, seed, temperature, top_k, top_p, max_new):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([[int(i) for i in prompt.split(",")]])
    torch.manual_seed(int(seed))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                             max_new_tokens=int(max_new),
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    print(json.dumps({"generated_ids": out[0, ids.shape[1]:].tolist()}))


def chat(model_dir, text):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    print(json.dumps({"prompt_ids": list(ids)}))


if __name__ == "__main__":
    {"sample": sample, "chat": chat}[sys.argv[1]](*sys.argv[2:])
