"""Device mesh, logical-axis rules and shardings for parameters and batches.

Parameters name their axes once (`logical_axes` metadata); rules map each logical name to mesh axes, so
moving from FSDP to tensor parallelism is a config change (`mesh.rules`). A model carries its rules
(`Decoder.rules`), and every placement and in-model sharding constraint reads them from there. The mesh
uses Auto axis types (GSPMD propagation between the explicit in/out shardings and sharding constraints we set).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

if TYPE_CHECKING:
    from rlsc_jax.config import TrainConfig

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes (tried in order; an axis that does not divide the dimension is dropped).
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    # Not an array's axis: the mesh axes the sampler's decode layout also splits the MLP's hidden units and the
    # vocabulary over (tensor-parallel decoding; `decode_rules`). Empty: each device holds whole layers.
    "decode_split": (),
}
# Rules frozen to sorted (logical axis, mesh axes) pairs: hashable, so a model's rules are part of its graphdef
# and every jitted program that takes the graphdef is compiled (and cached) for exactly those rules.
Rules = tuple[tuple[str, tuple[str, ...]], ...]


def axis_rules(overrides: Mapping[str, Sequence[str]] | Rules | None = None) -> Rules:
    """DEFAULT_RULES with `overrides` replacing the logical axes they name, frozen; an unknown logical or mesh
    axis is a one-line ValueError naming it."""
    rules = dict(DEFAULT_RULES)
    for name, axes in dict(overrides or {}).items():
        if name not in DEFAULT_RULES:
            raise ValueError(f"mesh.rules.{name}: unknown logical axis; known: {', '.join(DEFAULT_RULES)}")
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ValueError(f"mesh.rules.{name}={list(axes)}: unknown mesh axis {unknown[0]!r}; "
                             f"known: {', '.join(MESH_AXES)}")
        rules[name] = tuple(axes)
    return tuple(sorted(rules.items()))


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolves a (data, fsdp, tensor) request, where one -1 takes the remaining devices."""
    sizes = [data, fsdp, tensor]
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): sizes must be positive, with at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}) needs {math.prod(sizes)} devices, but {num_devices} are available")
    return tuple(sizes)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices (or the given ones), with Auto axis types."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    if devices == jax.devices():
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def make_run_mesh(cfg: TrainConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A training config's mesh (over all devices, or the given ones), checked against the rows of one
    micro-batch, which it must split evenly over the batch axes."""
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    rows = cfg.questions_per_step * cfg.sampling.num_samples // cfg.grad_accum
    check_rows(rows, "questions_per_step * sampling.num_samples / grad_accum", "per micro-batch", mesh,
               axis_rules(cfg.mesh.rules))
    return mesh


def check_rows(rows: int, what: str, per: str, mesh: Mesh, rules: Rules) -> None:
    """A one-line ValueError unless `rows` (the value of `what`) split evenly over the batch axes."""
    ways = row_shards(mesh, rules)
    if rows % ways:
        raise ValueError(f"{what} = {rows} rows {per} must be divisible by "
                         f"{' * '.join(f'mesh.{a}' for a in batch_axes(rules))} = {ways}")


def logical_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """PartitionSpec for an array whose dimensions carry logical names; indivisible or reused mesh axes are dropped."""
    rules = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        chosen = []
        for mesh_axis in rules.get(name, ()) if name else ():
            size = mesh.shape[mesh_axis]
            if mesh_axis in used or size == 1 or dim % (math.prod(mesh.shape[a] for a in chosen) * size):
                continue
            chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return P(*spec)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules):
    """The `nnx.State` with each variable holding its NamedSharding (same tree structure as `state`)."""
    def one(var):
        shape = var.get_value().shape
        axes = var.get_metadata().get("logical_axes", (None,) * len(shape))
        return var.replace(NamedSharding(mesh, logical_spec(axes, shape, mesh, rules)))
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_axes(rules: Rules) -> tuple[str, ...]:
    """The mesh axes a batch's rows are split over: the `batch` rule's (default: data, fsdp)."""
    return dict(rules)["batch"]


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension split over the batch axes; the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(rules), *([None] * (ndim - 1))))


def row_shards(mesh, rules: Rules) -> int:
    """How many ways a batch's rows are split: the product of the batch axes' sizes."""
    return math.prod(mesh.shape[a] for a in batch_axes(rules))


def use_mesh(mesh: Mesh | None):
    """`jax.set_mesh(mesh)`, under which `constrain_rows` and the other constraints below apply; a no-op
    context for None."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def platform() -> str:
    """The platform the program being built is for: the ambient mesh's devices' ("cpu", "gpu", "tpu"), else the
    default backend's. A plan compiled on a CPU host for a TPU slice (`rlsc-plan --topology`) thus takes the TPU's
    choices."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return device.platform if device is not None else jax.default_backend()


def ambient_mesh():
    """The mesh set by the caller with `jax.set_mesh` (inside jit: its abstract mesh), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or any(a not in mesh.shape for a in MESH_AXES) else mesh


def constrain_rows(x: jax.Array, rules: Rules, axis: int = 0, without: Sequence[str] = ()) -> jax.Array:
    """Pins an activation's row axis (`axis`) to the batch axes (less those in `without`) under the ambient mesh
    (`jax.set_mesh`).

    Without it GSPMD may split a layer's matmuls over the FSDP-sharded weight dimension and all-gather
    the activations instead of the weights. Rows that do not divide (a prefill of fewer prompts than devices)
    are replicated: left to propagation they were split along some other axis and then fully rematerialised.
    Identity without an ambient mesh.
    """
    mesh = ambient_mesh()
    if mesh is None or x.ndim <= axis:
        return x
    axes = tuple(a for a in batch_axes(rules) if a not in without)
    rows = axes if x.shape[axis] % math.prod(mesh.shape[a] for a in axes) == 0 else None
    return jax.lax.with_sharding_constraint(x, P(*([None] * axis), rows, *([None] * (x.ndim - axis - 1))))


def decode_split(rules: Rules) -> tuple[str, ...]:
    """The mesh axes of the `decode_split` rule: those a tensor-parallel decode layout splits the MLP and the
    vocabulary over (empty: none)."""
    return dict(rules)["decode_split"]


def decode_rules(rules: Rules) -> Rules:
    """The rules of the sampler's decode layout: every weight whole on each device (the fsdp axis dropped, so it
    is gathered once per sampling call rather than per token), except the MLP's hidden units and the vocabulary,
    which are also split over the `decode_split` axes. Each device then reads its share of those weights per token
    and the layers' MLP and the LM head take every row, at the cost of a few small collectives per layer."""
    split = decode_split(rules)
    out = {name: tuple(a for a in axes if a != "fsdp") for name, axes in dict(rules).items()}
    for name in ("mlp", "vocab"):
        out[name] += tuple(a for a in split if a not in out[name])
    return tuple(sorted(out.items()))


def to_decode_layout(x: jax.Array, axes: Sequence[str], rules: Rules) -> jax.Array:
    """A weight moved to the sampler's decode layout (`decode_rules`): gathered over FSDP first, then split over the
    `decode_split` axes. GSPMD cannot move a split from one axis to another (`embed` to `mlp` or `vocab`) directly
    and would replicate the whole array to get there."""
    return constrain_logical(gather_fsdp(x, axes, rules), axes, decode_rules(rules))


def constrain_logical(x: jax.Array, axes: Sequence[str], rules: Rules) -> jax.Array:
    """x constrained to the sharding its logical `axes` get under the ambient mesh; identity without one."""
    mesh = ambient_mesh()
    return x if mesh is None else jax.lax.with_sharding_constraint(x, logical_spec(axes, x.shape, mesh, rules))


def gather_fsdp(x: jax.Array, axes: Sequence[str], rules: Rules) -> jax.Array:
    """A weight constrained to its sharding under `rules` without the fsdp axis: gathered (in whatever dtype it
    has now, so cast it to the compute dtype first) before it multiplies row-sharded activations, rather than
    all-reducing their products; identity without an ambient mesh."""
    return constrain_logical(x, axes, tuple((name, tuple(a for a in mesh_axes if a != "fsdp"))
                                            for name, mesh_axes in dict(rules).items()))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated over the mesh."""
    return NamedSharding(mesh, P())


def host_to_global(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from a host array every process holds in full; each device copies only its shard."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host sharded) array gathered to numpy on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))
