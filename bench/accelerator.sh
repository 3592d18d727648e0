#!/usr/bin/env bash
# The accelerator checks in one run, each part in its own process with its own time limit (so one that hangs or
# fails leaves the others' results):
#   train   the fused cuDNN attention against this project's own (values and gradients), then the paper's 1.5B
#           RLSC step (16 x (256 + 3072) tokens, fp32 masters, bf16 compute, random weights) per attention x remat
#           setting, with its model-FLOPs utilisation (about 4 minutes on an H200);
#   decode  the sampler's decode (16 rows x 3072 new tokens) against its bandwidth bound for the 1.5B (also with
#           cuBLAS for XLA's Triton matmuls, and profiled) and the 7B, and for one device's share of a
#           tensor-parallel decode over 8 (`--share 8`, without its collectives) (about 4 minutes on an H200).
#
#   bash bench/accelerator.sh OUT_DIR [HARDWARE] [PARTS]   # HARDWARE: datasheet figures (default h200);
#                                                          # PARTS: "train decode" (default), or one of them
#
# The plan's figures for the same step come from the host CPU beforehand (`python -m rlsc_jax.plan --config
# configs/paper_qwen25_math_1.5b.yaml model=configs/models/qwen2.5-math-1.5b --devices 1 --hardware h200 --json FILE`).
# The earlier checks (the 0.5B step and the sampler against PyTorch) are `bench/train_step.py --compute-dtype
# bfloat16` and `bench/sampling.py` (bench/README.md).
set -u
out=${1:?usage: bash bench/accelerator.sh OUT_DIR [HARDWARE] [PARTS]}
hardware=${2:-h200}
parts=${3:-train decode}
mkdir -p "$out"
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
paper=(--config configs/paper_qwen25_math_1.5b.yaml model=configs/models/qwen2.5-math-1.5b)
paper7=(--config configs/paper_qwen25_math_7b.yaml model=configs/models/qwen2.5-math-7b)

nvidia-smi -L
$py -c 'import jax, flax, optax; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax",
optax.__version__)'

if [[ " $parts " == *" train "* ]]; then
  timeout 120 $py bench/fused_check.py "${paper[@]}" 2>&1 | tee "$out/fused_check.log"
  timeout 450 $py bench/paper_step.py "${paper[@]}" --hardware "$hardware" \
      --settings xla:true cudnn:true cudnn:auto xla:auto --json "$out/paper_step.json" 2>&1 | tee "$out/paper_step.log"
fi

# decode NAME XLA_FLAGS ARGS...: one decode_step.py run, its table row on stdout, its log and JSON in OUT_DIR.
decode() {
  local name=$1 flags=$2
  shift 2
  XLA_FLAGS="$flags" timeout 150 $py bench/decode_step.py "$@" --hardware "$hardware" --label "$name" \
      --json "$out/decode_$name.json" > "$out/decode_$name.log" 2>&1
  echo "[exit $?] $(grep -E '^\||^profile|^  ' "$out/decode_$name.log" || tail -2 "$out/decode_$name.log")"
}
if [[ " $parts " == *" decode "* ]]; then
  echo "| setting | model | rows x new tokens | ms / token | bound ms | of bound | weights + filled cache GiB | compile + 1st call s |"
  echo "|---|---|---|---|---|---|---|---|"
  decode 1.5b "" "${paper[@]}"
  decode 1.5b-cublas "--xla_gpu_enable_triton_gemm=false" "${paper[@]}"
  decode 1.5b-share8 "" "${paper[@]}" --share 8
  decode 7b "" "${paper7[@]}"
  decode 7b-share8 "" "${paper7[@]}" --share 8
  # 128 tokens, traced, and the decode program's optimised HLO (which kernels, which of them in CUDA graphs)
  decode 1.5b-profile "--xla_dump_to=$out/hlo --xla_dump_hlo_module_re=.*_decode.*" "${paper[@]}" \
      sampling.max_new_tokens=128 --profile "$out/trace"
  rm -rf "$out/trace"
  find "$out/hlo" -type f ! -name '*_decode*' -delete 2>/dev/null
fi
