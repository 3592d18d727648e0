"""Accelerators `rlsc_jax.plan` can judge a config against: memory, peak dense FLOP/s, HBM and interconnect
bandwidth per device, each from the vendor's public specification."""

from __future__ import annotations

import dataclasses

GB = 1e9
GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One device. `fp32_flops` is None where the vendor publishes no fp32 matmul rate."""

    name: str
    memory_bytes: float
    bf16_flops: float
    fp32_flops: float | None
    hbm_bytes_per_s: float
    interconnect_bytes_per_s: float
    source: str

    def matmul_flops(self, compute_dtype: str) -> float:
        """Peak dense matmul rate for a compute dtype (fp32 without a published rate: bf16 / 6, the six
        bf16 passes XLA uses for fp32 matmuls at HIGHEST precision)."""
        if compute_dtype == "float32":
            return self.fp32_flops if self.fp32_flops is not None else self.bf16_flops / 6
        return self.bf16_flops


HARDWARE = {h.name: h for h in (
    Hardware("a100-80gb", 80 * GiB, 312e12, 19.5e12, 2039 * GB, 600 * GB,
             "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB: 312 TFLOPS bf16 dense, 19.5 TFLOPS fp32 "
             "(non-tensor-core), 2,039 GB/s HBM2e, 600 GB/s NVLink)"),
    Hardware("h100-80gb", 80 * GiB, 989e12, 67e12, 3350 * GB, 900 * GB,
             "NVIDIA H100 Tensor Core GPU datasheet (SXM5: 989 TFLOPS bf16 dense, 67 TFLOPS fp32, "
             "3.35 TB/s HBM3, 900 GB/s NVLink)"),
    Hardware("h200", 141 * GB, 989e12, 67e12, 4800 * GB, 900 * GB,
             "NVIDIA H200 Tensor Core GPU datasheet (SXM: 141 GB HBM3e, 4.8 TB/s, 989 TFLOPS bf16 dense, "
             "67 TFLOPS fp32, 900 GB/s NVLink)"),
    Hardware("tpu-v5e", 16 * GiB, 197e12, None, 819 * GB, 200 * GB,
             "Google Cloud TPU v5e documentation (per chip: 197 TFLOPS bf16, 16 GB HBM2, 819 GB/s, "
             "ICI 1,600 Gbps)"),
    Hardware("tpu-v5p", 95 * GiB, 459e12, None, 2765 * GB, 600 * GB,
             "Google Cloud TPU v5p documentation (per chip: 459 TFLOPS bf16, 95 GB HBM2e, 2,765 GB/s, "
             "ICI 4,800 Gbps)"),
)}


def get_hardware(name: str) -> Hardware:
    """The named device; an unknown name is a one-line error listing the known ones."""
    if name not in HARDWARE:
        raise ValueError(f"--hardware {name!r}: unknown (known: {', '.join(HARDWARE)})")
    return HARDWARE[name]
