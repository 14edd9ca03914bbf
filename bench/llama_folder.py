"""Writes a Llama-shaped Hugging Face model folder with random weights, using PyTorch alone
(no transformers: bench/gpu_check.sh runs it where only PyTorch is installed), and a
pre-tokenized causal-LM data set for it.

    python llama_folder.py DIR [--size bench|1gb|probe] [--examples N] [--length T]

DIR gets config.json, model.safetensors (float32, transformers' names and metadata),
generation_config.json, tokenizer.json (a word-level tokenizer over the vocabulary) and
data.safetensors: input_ids [N, T] of random tokens and labels aligned with them (the
loss shifts them), as transformers takes language-modelling data and so does the host.
"""

import argparse
import json
import pathlib

import torch
from safetensors.torch import save_file

SIZES = {
    # The operator-count probe (op_count.py): 2 layers, width 64 (about 100k parameters).
    "probe": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256),
    # The fine-tuning benchmark: 4 layers, width 512, 8 heads, 2 KV heads (about 20M parameters).
    "bench": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=8192),
    # The loading benchmark: about 245M float32 parameters, a 1 GB checkpoint.
    "1gb": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                num_key_value_heads=4, vocab_size=32000),
}


def write(folder, size, examples, length):
    folder.mkdir(parents=True, exist_ok=True)
    shape = SIZES[size]
    config = dict(shape, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                  max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02,
                  dtype="float32")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    hidden, inner, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    head_dim = hidden // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    generator = torch.Generator().manual_seed(0)
    normal = lambda *dims: torch.randn(*dims, generator=generator) * 0.02
    tensors = {"model.embed_tokens.weight": normal(vocab, hidden), "model.norm.weight": torch.ones(hidden),
               "lm_head.weight": normal(vocab, hidden)}
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": torch.ones(hidden), p + "post_attention_layernorm.weight": torch.ones(hidden),
            p + "self_attn.q_proj.weight": normal(hidden, hidden), p + "self_attn.k_proj.weight": normal(kv, hidden),
            p + "self_attn.v_proj.weight": normal(kv, hidden), p + "self_attn.o_proj.weight": normal(hidden, hidden),
            p + "mlp.gate_proj.weight": normal(inner, hidden), p + "mlp.up_proj.weight": normal(inner, hidden),
            p + "mlp.down_proj.weight": normal(hidden, inner),
        })
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    vocabulary = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
                 "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
                 "decoder": None, "model": {"type": "WordLevel", "vocab": vocabulary, "unk_token": "<unk>"}}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    ids = torch.randint(3, vocab, (examples, length), generator=generator)
    save_file({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()},
              str(folder / "data.safetensors"))
    return sum(t.numel() for t in tensors.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--size", choices=SIZES, default="bench")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    print(json.dumps({"parameters": write(args.dir, args.size, args.examples, args.length)}))
