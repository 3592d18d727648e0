"""`remat: auto`: the cheapest rematerialisation and grad_accum whose train step fits the device, chosen by compiling
(never running) the step for the longest batch the run can make, with the compiler of the devices it will run on.

Cheapest first: no remat (nothing recomputed), then remat keeping the matmul outputs ("dots"), then remat keeping
only each layer's input ("nothing": the layer's forward pass runs twice); only when none of them fits, twice the
grad_accum (one more scoring pass without gradients, half the rows' activations live at a time), and so on.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from rlsc_jax.sharding import row_shards

GiB = 1024**3
HEADROOM = 0.10  # of the device's memory left free: allocator fragmentation, the sampler's buffers between steps
POLICIES = (None, "dots", "nothing")  # `Trainer.remat`, cheapest first


def device_memory_bytes(device: jax.Device | None = None) -> int:
    """What the allocator of `device` (default: the first local one) may hold; on a CPU, the host's memory shared
    by its local devices."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // jax.local_device_count()


def peak_bytes(trainer, state, rows: int, prompt_width: int, completion_width: int) -> int:
    """Per-device peak of the trainer's step compiled (not run) for that batch: arguments + outputs - donated + temp."""
    m = trainer.compile_step(state, rows, prompt_width, completion_width).memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


def _describe(remat: str | None, grad_accum: int) -> str:
    return f"remat {remat or 'off'}, grad_accum {grad_accum}"


def fit(trainer, state, rows: int, prompt_width: int, completion_width: int, memory_bytes: int):
    """(the trainer with the first setting whose compiled step fits `memory_bytes` less HEADROOM, one line per
    setting tried). `state` may be concrete or abstract; nothing is allocated or run. grad_accum grows only
    while it still divides the rows into micro-batches that every row shard splits evenly."""
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    budget = (1 - HEADROOM) * memory_bytes
    shards = row_shards(trainer.mesh, trainer.rules)
    accums = [trainer.grad_accum]
    while rows % (2 * accums[-1] * shards) == 0:
        accums.append(2 * accums[-1])
    tried = []
    for accum in accums:
        for remat in POLICIES:
            candidate = dataclasses.replace(trainer, remat=remat, grad_accum=accum)
            peak = peak_bytes(candidate, abstract, rows, prompt_width, completion_width)
            tried.append(f"{_describe(remat, accum)}: {peak / GiB:.1f} GiB")
            if peak <= budget:
                return candidate, tried
    raise ValueError(f"remat=auto: no setting fits {budget / GiB:.1f} GiB per device ({1 - HEADROOM:.0%} of "
                     f"{memory_bytes / GiB:.1f}) for {rows} rows x ({prompt_width} + {completion_width}) tokens; "
                     f"tried {'; '.join(tried)}. Use more devices, fewer rows or shorter completions")


def report(trainer, tried: list[str], memory_bytes: int) -> str:
    """One line: what `fit` chose and why."""
    return (f"remat=auto: {_describe(trainer.remat, trainer.grad_accum)} (the cheapest that fits "
            f"{(1 - HEADROOM) * memory_bytes / GiB:.1f} GiB per device; {'; '.join(tried)})")
