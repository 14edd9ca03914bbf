#!/usr/bin/env bash
# Make the project-local Python venv that provides libtorch (tch 0.24 needs PyTorch 2.11.0 exactly).
# Idempotent: a venv that already has the right torch is left alone.
set -euo pipefail

TORCH_VERSION="2.11.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

have_torch() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null
}

if ! have_torch; then
    echo "setup: installing torch==$TORCH_VERSION into $VENV (one-off, about 5 GB)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
fi

# The test suite's reference scripts read and write safetensors files with numpy arrays,
# read TensorBoard event files back with TensorBoard's own reader, and write Parquet files
# as Hugging Face datasets does (pyarrow).
if ! "$VENV/bin/python" -c "import numpy, safetensors, tensorboard, pyarrow" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet numpy safetensors tensorboard pyarrow
fi

# The pretrained-model tests make tiny random models with transformers itself and check
# the host's logits, training steps, saved folders and generations against it (transformers'
# Trainer needs accelerate), and the LoRA tests check adapters against PEFT's. Pinned: the
# ports follow these versions' modelling code and file formats.
# The stock metric, optimizer and augmentation plugins are checked against scikit-learn,
# torch.optim and torchvision (0.26 is the torchvision built for torch 2.11). Chat and
# prompt-completion data are checked against TRL's SFTTrainer (which needs datasets).
TRANSFORMERS_PINS="transformers==5.24.0 tokenizers==0.23.3 accelerate==1.15.0 peft==0.21.2 scikit-learn==1.9.1 torchvision==0.26.0 trl==1.16.0 datasets==5.2.0"
if ! "$VENV/bin/python" -c "
import importlib.metadata as m, sys
want = dict(p.split('==') for p in '$TRANSFORMERS_PINS'.split())
sys.exit(0 if all(m.version(k) == v for k, v in want.items()) else 1)" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet $TRANSFORMERS_PINS
fi

# The NCCL part of the distributed shim compiles against the CUDA runtime headers, which
# include headers only the crt and cccl wheels ship (small; CUDA torch builds only).
if [ -d "$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/../nvidia/nccl" ] &&
    ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('nvidia-cuda-crt'); m.version('nvidia-cuda-cccl')" 2>/dev/null; then
    CUDA_RUNTIME="$("$VENV/bin/python" -c "import importlib.metadata as m; print('.'.join(m.version('nvidia-cuda-runtime').split('.')[:2]))")"
    "$VENV/bin/python" -m pip install --quiet "nvidia-cuda-crt~=$CUDA_RUNTIME.0" "nvidia-cuda-cccl~=$CUDA_RUNTIME.0"
fi

# A stable path for .cargo/config.toml, whatever the Python minor version is.
TORCH_DIR="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
ln -sfn "$TORCH_DIR" "$VENV/torch"
