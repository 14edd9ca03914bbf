"""A tiny pretrained-model stand-in and a 3-label data set, made offline.

    python make_tiny_model.py DIR

writes DIR/tiny-bert (a randomly initialized BertModel without a head, saved by
transformers with a BPE tokenizer trained here) and DIR/train.jsonl, DIR/eval.jsonl
(texts labelled 0 negative, 1 neutral, 2 positive by the words they contain). With a real
model, skip this script: download the model (hf download bert-base-uncased --local-dir
models/bert-base-uncased) and point model_name_or_path at it.
"""

import json
import random
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

FILLER = "the a movie film plot actors music scenes story ending it was and with its".split()
CUES = [
    "awful boring terrible dull bad".split(),  # 0: negative
    "fine average okay ordinary plain".split(),  # 1: neutral
    "great wonderful superb moving good".split(),  # 2: positive
]


def example(rng):
    label = rng.randrange(3)
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 12))]
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(CUES[label]))
    return {"text": " ".join(words), "label": label}


def main(out):
    rng = random.Random(0)
    rows = [example(rng) for _ in range(600)]
    for name, part in [("train", rows[:480]), ("eval", rows[480:])]:
        with open(f"{out}/{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in part)
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        [row["text"] for row in rows],
        trainers.BpeTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=416, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(f"{out}/tiny-bert")
    fast.save_pretrained(f"{out}/tiny-bert")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
