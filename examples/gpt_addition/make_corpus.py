"""Writes an addition corpus for the GPT example: one JSON line per sum, {"text": "12+7=19"}.

Every pair a + b with a, b below --limit, shuffled with a fixed seed; --eval-share of them
go to eval.jsonl. Python's standard library only.

    python3 make_corpus.py --limit 50 --out DIR
"""

import argparse
import json
import pathlib
import random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help="operands are 0 .. limit-1")
    parser.add_argument("--eval-share", type=float, default=0.1, help="share of the sums held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."))
    args = parser.parse_args()

    sums = [f"{a}+{b}={a + b}" for a in range(args.limit) for b in range(args.limit)]
    random.Random(args.seed).shuffle(sums)
    held_out = max(1, round(len(sums) * args.eval_share))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, texts in (("eval.jsonl", sums[:held_out]), ("train.jsonl", sums[held_out:])):
        with open(args.out / name, "w") as file:
            for text in texts:
                file.write(json.dumps({"text": text}) + "\n")
    print(f"{len(sums) - held_out} training and {held_out} evaluation sums in {args.out}")


if __name__ == "__main__":
    main()
