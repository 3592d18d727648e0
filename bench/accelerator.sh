#!/usr/bin/env bash
# The accelerator checks in one run (about 8 minutes on an H200): the fused cuDNN attention against this project's
# own (values and gradients), then the paper's 1.5B RLSC step (16 x (256 + 3072) tokens, fp32 masters, bf16
# compute, random weights) per attention x remat setting, before (xla:true, the earlier default) and after
# (cudnn, remat auto), with its model-FLOPs utilisation, and the sampler's decode against its bandwidth bound.
# Each part has its own time limit, so one that hangs or fails leaves the others' results.
#
#   bash bench/accelerator.sh OUT_DIR [HARDWARE]     # HARDWARE: the datasheet MFU is taken against (default h200)
#
# The plan's figures for the same step come from the host CPU beforehand (`python -m rlsc_jax.plan --config
# configs/paper_qwen25_math_1.5b.yaml model=configs/models/qwen2.5-math-1.5b --devices 1 --hardware h200 --json FILE`).
# The earlier checks (the 0.5B step and the sampler against PyTorch) are `bench/train_step.py --compute-dtype
# bfloat16` and `bench/sampling.py` (bench/README.md).
set -u
out=${1:?usage: bash bench/accelerator.sh OUT_DIR [HARDWARE]}
hardware=${2:-h200}
mkdir -p "$out"
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
paper=(--config configs/paper_qwen25_math_1.5b.yaml model=configs/models/qwen2.5-math-1.5b)

nvidia-smi -L
$py -c 'import jax, flax, optax; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax",
optax.__version__)'

timeout 120 $py bench/fused_check.py "${paper[@]}" 2>&1 | tee "$out/fused_check.log"
timeout 450 $py bench/paper_step.py "${paper[@]}" --hardware "$hardware" --decode \
    --settings xla:true cudnn:true cudnn:auto xla:auto --json "$out/paper_step.json" 2>&1 | tee "$out/paper_step.log"
