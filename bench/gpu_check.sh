#!/usr/bin/env bash
# The GPU check (never part of CI), for a CUDA machine with PyTorch 2.11.0 (+cu130) in a venv
# but no Rust toolchain and no network. Build on a CPU machine first:
#
#   cargo build --release -p host -p weighted_ce
#
# copy the repository with target/release/{host,libweighted_ce.so} (a few MB) and run:
#
#   TORCH_VENV=/opt/torch/.venv bench/gpu_check.sh
#
# It trains the default job on CUDA with weighted_ce, then the GPT benchmark in bf16 on the
# host and in a PyTorch loop, and prints the ratio; then the pretrained Llama-shaped fine-tune
# (bench/llama_folder.py, written with PyTorch alone) in bf16, beside transformers in a
# PyTorch loop where transformers is installed; LoRA against full fine-tuning at sequence
# 512 with bf16 weights (and PEFT where installed); last, the distributed path (NCCL through
# c10d) at world size 1 against the plain loop. Under five minutes on one GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VENV="${TORCH_VENV:-/opt/torch/.venv}"
DEVICE="${DEVICE:-cuda}"   # DEVICE=cpu runs the same script on a machine without a GPU
PYTHON="$TORCH_VENV/bin/python"
TORCH_LIB="$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
HOST="$ROOT/target/release/host"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

echo "== device"
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"

echo "== default job on $DEVICE with weighted_ce"
"$HOST" --device "$DEVICE" --plugin "$ROOT/target/release/libweighted_ce.so" --disable-tqdm \
    --save-strategy no --output-dir default 2>&1 | grep -E "device:|^  (eval_accuracy|train_samples_per_second) |error" || true
test -f default/all_results.json

echo "== GPT in bf16: host against a PyTorch loop (300 steps, batch 64)"
"$PYTHON" "$ROOT/examples/gpt_addition/make_corpus.py" --limit 100 --out corpus >/dev/null
TOKENIZER="$ROOT/examples/gpt_addition/tokenizer.json"
STEPS=300
"$HOST" --device "$DEVICE" --bf16 --config "$ROOT/examples/gpt_addition/job.toml" --train-file corpus/train.jsonl \
    --eval-file corpus/eval.jsonl --tokenizer-file "$TOKENIZER" --max-steps "$STEPS" --eval-strategy no \
    --save-strategy no --load-best-model-at-end false --disable-tqdm --output-dir gpt >/dev/null 2>gpt.log \
    || { cat gpt.log; exit 1; }
HOST_RATE="$("$PYTHON" -c "import json; r = json.load(open('gpt/all_results.json')); print($STEPS * 64 / r['train_runtime'])")"
TORCH_RATE="$(cd "$ROOT/bench" && BENCH_DEVICE="$DEVICE" BENCH_BF16=1 "$PYTHON" pytorch_loop.py gpt \
    "$WORK/corpus/train.jsonl" "$TOKENIZER" "$STEPS" | "$PYTHON" -c "import json, sys; print(json.load(sys.stdin)['samples_per_second'])")"
"$PYTHON" -c "h, t = $HOST_RATE, $TORCH_RATE; print(f'host {h:.0f} samples/s, PyTorch {t:.0f} samples/s, host/PyTorch {h / t:.2f}')"

echo "== pretrained Llama-shaped fine-tune in bf16 (4 x 512, GQA 8/2, sequence 128, batch 8, 50 steps)"
"$PYTHON" "$ROOT/bench/llama_folder.py" llama >/dev/null
"$HOST" --device "$DEVICE" --bf16 --model-name-or-path llama --train-file llama/data.safetensors \
    --eval-file llama/data.safetensors --max-steps 50 --per-device-train-batch-size 8 --max-seq-length 128 \
    --eval-strategy no --save-strategy no --disable-tqdm --output-dir llama-out >/dev/null 2>llama.log \
    || { cat llama.log; exit 1; }
grep -h "loaded " llama.log || true
LLAMA_HOST="$("$PYTHON" -c "import json; r = json.load(open('llama-out/all_results.json')); print(50 * 8 * 128 / r['train_runtime'])")"
if "$PYTHON" -c "import transformers" 2>/dev/null; then
    LLAMA_TORCH="$(BENCH_DEVICE="$DEVICE" BENCH_BF16=1 "$PYTHON" "$ROOT/bench/llama_finetune.py" loop llama 50 8 loop \
        | "$PYTHON" -c "import json, sys; print(json.load(sys.stdin)['tokens_per_second'])")"
    "$PYTHON" -c "h, t = $LLAMA_HOST, $LLAMA_TORCH; print(f'host {h:.0f} tokens/s, transformers in a PyTorch loop {t:.0f} tokens/s, host/PyTorch {h / t:.2f}')"
else
    "$PYTHON" -c "print(f'host {$LLAMA_HOST:.0f} tokens/s (transformers is not installed here: no PyTorch comparison)')"
fi

LORA_STEPS="${LORA_STEPS:-30}"   # a CPU dry run can take 1
echo "== LoRA (r 16, all-linear) against full fine-tuning, bf16 weights, sequence 512, batch 8, $LORA_STEPS steps"
"$PYTHON" "$ROOT/bench/llama_folder.py" llama512 --examples 64 --length 512 >/dev/null
for mode in full lora lora+gc; do
    EXTRA=(--torch-dtype bfloat16)
    case "$mode" in
        lora) EXTRA+=(--use-peft --lora-target-modules all-linear) ;;
        lora+gc) EXTRA+=(--use-peft --lora-target-modules all-linear --gradient-checkpointing) ;;
    esac
    "$HOST" --device "$DEVICE" --model-name-or-path llama512 --train-file llama512/data.safetensors \
        --eval-file llama512/data.safetensors --max-steps "$LORA_STEPS" --per-device-train-batch-size 8 --max-seq-length 512 \
        --eval-strategy no --save-strategy no --disable-tqdm --output-dir "lora-$mode" "${EXTRA[@]}" \
        >/dev/null 2>"lora-$mode.log" || { cat "lora-$mode.log"; exit 1; }
    "$PYTHON" -c "import json; r = json.load(open('lora-$mode/all_results.json')); print(f'host $mode: {$LORA_STEPS * 8 * 512 / r[\"train_runtime\"]:.0f} tokens/s')"
done
if "$PYTHON" -c "import peft" 2>/dev/null; then
    for gc in 0 1; do
        BENCH_DEVICE="$DEVICE" BENCH_BF16=1 BENCH_LORA=1 BENCH_GC=$gc "$PYTHON" "$ROOT/bench/llama_finetune.py" loop \
            llama512 "$LORA_STEPS" 8 loop512 | "$PYTHON" -c "import json, sys; print(f'PEFT in a PyTorch loop (gc $gc, autocast): {json.load(sys.stdin)[\"tokens_per_second\"]:.0f} tokens/s')"
    done
fi

echo "== distributed path at world size 1 (NCCL on CUDA, Gloo on CPU) against the plain loop"
# The digits MLP, 2000 steps of 64, twice each, interleaved: any cost of the c10d path
# (gradient bucket all-reduce, control agreement each step) shows in the ratio.
rate() { "$PYTHON" -c "import json; print(json.load(open('$1/all_results.json'))['train_samples_per_second'])"; }
JOB=(--device "$DEVICE" --max-steps 2000 --per-device-train-batch-size 64 --eval-strategy no --save-strategy no --disable-tqdm)
for round in 1 2; do
    "$HOST" "${JOB[@]}" --output-dir "plain$round" >/dev/null 2>&1
    "$HOST" launch --nproc-per-node 1 -- "${JOB[@]}" --output-dir "ddp$round" >"ddp$round.log" 2>&1 \
        || { cat "ddp$round.log"; exit 1; }
done
grep -h "distributed:" ddp1.log || true
"$PYTHON" -c "
plain = sorted([$(rate plain1), $(rate plain2)])[-1]
ddp = sorted([$(rate ddp1), $(rate ddp2)])[-1]
print(f'plain {plain:.0f} samples/s, c10d world size 1 {ddp:.0f} samples/s, c10d/plain {ddp / plain:.2f}')"
