"""The host's built-in models (host/src/models) in PyTorch, with the same parameter names:
the digits MLP and the GPT (pre-layer-norm blocks, fused attention). Used by the
benchmark and by the reference loop that the fidelity test compares the host with."""

import json

import torch
import torch.nn.functional as F


class Mlp(torch.nn.Module):
    def __init__(self, widths=(64, 256, 256, 10)):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(torch.nn.ReLU())
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Block(torch.nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)
        self.ln2 = torch.nn.LayerNorm(width)
        self.fc = torch.nn.Linear(width, 4 * width)
        self.out = torch.nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(attended)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Gpt(torch.nn.Module):
    def __init__(self, vocab, width=128, layers=2, heads=4, context=16):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, width)
        self.embed_positions = torch.nn.Embedding(context, width)
        self.blocks = torch.nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(width)
        self.lm_head = torch.nn.Linear(width, vocab, bias=False)

    def forward(self, ids):
        x = self.embed_tokens(ids) + self.embed_positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def addition_tokens(corpus, tokenizer):
    """The corpus as the host tokenizes it: [BOS] characters [EOS], padded with [PAD] (0);
    labels are the next tokens, -100 past the end."""
    vocab = json.load(open(tokenizer))["model"]["vocab"]
    rows = [[vocab["[BOS]"]] + [vocab[c] for c in json.loads(line)["text"]] + [vocab["[EOS]"]] for line in open(corpus)]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
    labels = torch.tensor([r[1:] + [-100] * (longest - len(r) + 1) for r in rows])
    return ids, labels, len(vocab)
