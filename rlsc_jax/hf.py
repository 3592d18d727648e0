"""Hugging Face checkpoints <-> `Decoder`: streaming safetensors load (straight onto the mesh) and export.

`load` reads `config.json` and `model.safetensors` or a sharded `model.safetensors.index.json`, checks
every tensor name and shape from the headers before reading any data, then reads one tensor at a
time and places it directly on its target sharding (a decoder layer's tensor goes into its slot of
the stacked `layers` parameter, on the devices). `save` writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads, atomically (a temporary sibling renamed
into place), and copies the tokenizer files and extra config keys of a given source checkpoint through.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from rlsc_jax import sharding as sharding_lib
from rlsc_jax.dtypes import DTYPES
from rlsc_jax.models import Decoder, ModelConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors header names of the dtypes a weight may have
DEFAULT_SHARD_BYTES = 4 * 1024**3


class Mapping(NamedTuple):
    """One HF tensor: its Flax parameter path (and slot on the stacked `layers` axis, for a decoder layer's
    tensor), its HF name and shape, and the layout change between them."""

    path: tuple
    hf_name: str
    hf_shape: tuple[int, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    layer: int | None = None


def _transpose_to(shape):
    """HF [out, in] -> Flax [in, *shape[1:]] style: transpose then reshape to `shape`."""
    return lambda a: a.T.reshape(shape)


def _from_flax_transposed(a: np.ndarray, in_dims: int) -> np.ndarray:
    """Flax [*in, *out] kernel -> HF [prod(out), prod(in)] weight."""
    rows = int(np.prod(a.shape[:in_dims]))
    return a.reshape(rows, -1).T


def mappings(cfg: ModelConfig) -> list[Mapping]:
    """The full parameter table for a config, in HF order."""
    e, h, k, d, m, v = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.intermediate_size, cfg.vocab_size)
    same = lambda a: a  # noqa: E731
    out = [Mapping(("embed",), "model.embed_tokens.weight", (v, e), same, same)]
    for i in range(cfg.num_layers):
        p, n = ("layers",), f"model.layers.{i}."
        layer = [
            Mapping(p + ("input_norm", "weight"), n + "input_layernorm.weight", (e,), same, same),
            Mapping(p + ("attn", "q"), n + "self_attn.q_proj.weight", (h * d, e), _transpose_to((e, h, d)),
                    lambda a: _from_flax_transposed(a, 1)),
            Mapping(p + ("attn", "k"), n + "self_attn.k_proj.weight", (k * d, e), _transpose_to((e, k, d)),
                    lambda a: _from_flax_transposed(a, 1)),
            Mapping(p + ("attn", "v"), n + "self_attn.v_proj.weight", (k * d, e), _transpose_to((e, k, d)),
                    lambda a: _from_flax_transposed(a, 1)),
            Mapping(p + ("attn", "o"), n + "self_attn.o_proj.weight", (e, h * d), _transpose_to((h, d, e)),
                    lambda a: _from_flax_transposed(a, 2)),
        ]
        if cfg.attention_bias:
            layer += [
                Mapping(p + ("attn", "q_bias"), n + "self_attn.q_proj.bias", (h * d,), lambda a: a.reshape(h, d),
                        lambda a: a.reshape(-1)),
                Mapping(p + ("attn", "k_bias"), n + "self_attn.k_proj.bias", (k * d,), lambda a: a.reshape(k, d),
                        lambda a: a.reshape(-1)),
                Mapping(p + ("attn", "v_bias"), n + "self_attn.v_proj.bias", (k * d,), lambda a: a.reshape(k, d),
                        lambda a: a.reshape(-1)),
            ]
        layer += [
            Mapping(p + ("post_attn_norm", "weight"), n + "post_attention_layernorm.weight", (e,), same, same),
            Mapping(p + ("mlp", "gate"), n + "mlp.gate_proj.weight", (m, e), _transpose_to((e, m)), lambda a: a.T),
            Mapping(p + ("mlp", "up"), n + "mlp.up_proj.weight", (m, e), _transpose_to((e, m)), lambda a: a.T),
            Mapping(p + ("mlp", "down"), n + "mlp.down_proj.weight", (e, m), _transpose_to((m, e)), lambda a: a.T),
        ]
        out += [t._replace(layer=i) for t in layer]
    out.append(Mapping(("final_norm", "weight"), "model.norm.weight", (e,), same, same))
    if not cfg.tie_word_embeddings:
        out.append(Mapping(("lm_head",), "lm_head.weight", (v, e), _transpose_to((e, v)), lambda a: a.T))
    return out


def _quiet(table: list[Mapping]) -> bool:
    """Progress bars only for real checkpoints (hundreds of tensors), and only on process 0."""
    return len(table) < 100 or jax.process_index() != 0


def _tensor_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (from the index, or the single file's header)."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
        files = {name: path / fname for name, fname in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise FileNotFoundError(f"{f}: listed in {INDEX_FILE} but missing")
        return files
    single = path / SINGLE_FILE
    if not single.is_file():
        raise FileNotFoundError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")
    return {name: single for name in _open(single).keys()}


def _open(file: Path):
    """Opens a safetensors file, turning a corrupt or truncated header into a one-line error."""
    try:
        return safe_open(str(file), framework="numpy")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{file}: corrupt or truncated safetensors ({str(e).splitlines()[0]})") from None


def _check_names_and_shapes(cfg: ModelConfig, table: list[Mapping], files: dict[str, Path]) -> None:
    """Every expected tensor present with the right shape and a float dtype, nothing unexpected; reads headers
    only."""
    expected = {m.hf_name for m in table}
    for name in sorted(files):
        ignorable = name.endswith(IGNORED_SUFFIXES) or (cfg.tie_word_embeddings and name == "lm_head.weight")
        if name not in expected and not ignorable:
            raise ValueError(f"{files[name]}: unexpected tensor {name!r} for this config")
    handles: dict[Path, object] = {}
    for m in table:
        if m.hf_name not in files:
            raise ValueError(f"{m.hf_name}: tensor missing from the checkpoint")
        f = files[m.hf_name]
        handle = handles.setdefault(f, _open(f))
        tensor = handle.get_slice(m.hf_name)
        shape = tuple(tensor.get_shape())
        if shape != m.hf_shape:
            raise ValueError(f"{f}: tensor {m.hf_name!r} has shape {shape}, expected {m.hf_shape}")
        if tensor.get_dtype() not in FLOAT_DTYPES:  # an integer tensor would be cast and trained on silently
            raise ValueError(f"{f}: tensor {m.hf_name!r} has dtype {tensor.get_dtype()}, expected a float "
                             f"({', '.join(FLOAT_DTYPES)})")


def _read(file: Path, name: str) -> np.ndarray:
    """One tensor as numpy; a truncated data section becomes a one-line error."""
    try:
        return _open(file).get_tensor(name)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{file}: cannot read tensor {name!r} ({str(e).splitlines()[0]})") from None


def check(path: str | Path) -> ModelConfig:
    """The checkpoint's config after checking, from config.json and the safetensors headers only (no tensor
    is read), that every tensor the config needs is there with its shape: a one-line error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: model directory not found")
    cfg = ModelConfig.from_file(path)
    _check_names_and_shapes(cfg, mappings(cfg), _tensor_files(path))
    return cfg


def load(path: str | Path, dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None,
         rules=None, compute_dtype=None, num_layers: int | None = None) -> Decoder:
    """Loads an HF Qwen2/Llama checkpoint directory as a `Decoder` with parameters of `dtype`.

    `compute_dtype` (default: `dtype`) is what the model's matmuls run in. With a mesh every tensor goes
    straight to its sharding under the logical-axis `rules` (overrides of `sharding.DEFAULT_RULES`; each device
    copies only its shard), which the model keeps for training and sampling. `num_layers` keeps only the first that
    many decoder layers (the deeper ones are never read): a truncated model for numeric checks.
    """
    path = Path(path)
    dtype, compute_dtype = _dtype(dtype), _dtype(compute_dtype)
    cfg = check(path)
    files = _tensor_files(path)
    if num_layers is not None:
        cfg, files = _truncated(cfg, files, num_layers)
    table = mappings(cfg)

    abstract = nnx.eval_shape(lambda: Decoder(cfg, dtype=dtype, compute_dtype=compute_dtype, rules=rules,
                                              rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    shardings = sharding_lib.param_shardings(state, mesh, abstract.rules) if mesh is not None else None
    flat = dict(nnx.to_flat_state(state))
    flat_shardings = {k: v.get_value() for k, v in nnx.to_flat_state(shardings)} if shardings is not None else {}
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == jnp.bfloat16 else np.dtype(dtype)
    values: dict[tuple, jax.Array] = {}
    for m in tqdm(table, desc=f"loading {path.name}", unit="tensor", disable=_quiet(table)):
        host = np.ascontiguousarray(m.to_flax(_read(files[m.hf_name], m.hf_name)).astype(np_dtype, copy=False))
        sharding = flat_shardings.get(m.path)
        if m.layer is None:
            values[m.path] = _place(host, sharding)
            continue
        if m.path not in values:
            values[m.path] = _zeros(flat[m.path].get_value(), sharding)
        layer_sharding = None if sharding is None else NamedSharding(sharding.mesh, P(*sharding.spec[1:]))
        values[m.path] = _set_layer(values[m.path], _place(host, layer_sharding), m.layer)
    for key, value in values.items():
        flat[key].set_value(value)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _truncated(cfg: ModelConfig, files: dict[str, Path], num_layers: int) -> tuple[ModelConfig, dict[str, Path]]:
    """The config and tensor files of the first `num_layers` decoder layers (1 <= num_layers <= the model's)."""
    if not 1 <= num_layers <= cfg.num_layers:
        raise ValueError(f"num_layers={num_layers}: the model has {cfg.num_layers} layers")
    deeper = tuple(f"model.layers.{i}." for i in range(num_layers, cfg.num_layers))
    return (dataclasses.replace(cfg, num_layers=num_layers),
            {name: f for name, f in files.items() if not name.startswith(deeper)})


def _dtype(name):
    """A dtype from its name ('float32', 'bfloat16', 'float16') or as given (None stays None)."""
    return DTYPES.get(name, name) if isinstance(name, str) else name


def _place(host: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
    """A host array on its sharding (each device copies its shard), or on the default device."""
    return jnp.asarray(host) if sharding is None else sharding_lib.host_to_global(host, sharding)


def _zeros(abstract: jax.ShapeDtypeStruct, sharding: NamedSharding | None) -> jax.Array:
    """A zero array of `abstract`'s shape and dtype, created directly on its sharding."""
    make = functools.partial(jnp.zeros, abstract.shape, abstract.dtype)
    return jax.jit(make, out_shardings=sharding)() if sharding is not None else make()


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked: jax.Array, value: jax.Array, index) -> jax.Array:
    """`stacked` with slot `index` of its leading `layers` axis set to `value`, in place (donated)."""
    return jax.lax.dynamic_update_slice_in_dim(stacked, value[None].astype(stacked.dtype), index, axis=0)


def hf_tensors(model: Decoder) -> Iterator[tuple[Mapping, np.ndarray]]:
    """Every parameter as a host array in HF layout, one tensor at a time, in HF order (with its mapping)."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for m in mappings(model.cfg):
        value = flat[m.path].get_value()
        value = value if m.layer is None else value[m.layer]
        yield m, np.ascontiguousarray(m.to_hf(sharding_lib.to_host(value)))


def _hf_config(model: Decoder, dtype_name: str, source: Path | None) -> dict:
    """The source config.json, if any (keeping ids and extras), updated with this model's fields."""
    hf = {}
    if source and (source / "config.json").is_file():
        hf = json.loads((source / "config.json").read_text())
    hf.pop("rope_scaling", None)
    hf.update(model.cfg.to_hf())
    hf["dtype"] = hf["torch_dtype"] = dtype_name
    return hf


def save(model: Decoder, path: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES, dtype=None,
         source: str | Path | None = None) -> Path:
    """Writes `model` as an HF checkpoint directory (sharded with an index above `max_shard_bytes`), its
    tensors in `dtype` (default: the parameters' own, e.g. the fp32 masters; 'bfloat16' for serving).
    `source`, the checkpoint directory the model was loaded from, supplies the tokenizer files and the
    config keys the model does not hold (token ids, extras); without it only weights and config are written.

    Refuses a non-empty target; writes into a temporary sibling and renames it into place, so an
    interrupted save leaves nothing half-written. Multi-host: every process gathers, process 0 writes.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path}: exists and is not empty; refusing to overwrite")
    table = mappings(model.cfg)
    writer = jax.process_index() == 0
    np_dtype = np.dtype(_dtype(dtype) or model.embed[...].dtype)
    dtype_name = {np.dtype(ml_dtypes.bfloat16): "bfloat16", np.dtype(np.float16): "float16"}.get(np_dtype, "float32")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) if writer else None
    try:
        shard: dict[str, np.ndarray] = {}
        files: list[Path] = []
        weight_map: dict[str, int] = {}
        for m, arr in tqdm(hf_tensors(model), desc=f"saving {path.name}", unit="tensor", total=len(table),
                           disable=_quiet(table)):
            arr = arr.astype(np_dtype, copy=False)
            if shard and sum(a.nbytes for a in shard.values()) + arr.nbytes > max_shard_bytes:
                files.append(_flush(shard, tmp, len(files)))
                shard = {}
            shard[m.hf_name] = arr
            weight_map[m.hf_name] = len(files)
        files.append(_flush(shard, tmp, len(files)))
        if writer:
            _finish(model, tmp, files, weight_map, dtype_name, Path(source) if source else None)
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"rlsc_jax.hf.save:{path}")
    return path


def _flush(shard: dict[str, np.ndarray], tmp: Path | None, number: int) -> Path | None:
    """Writes one shard to a provisional name (process 0 only), so at most one shard is held in memory."""
    if tmp is None:
        return None
    file = tmp / f"shard-{number:05d}.safetensors"
    save_file(shard, str(file), metadata={"format": "pt"})
    return file


def _finish(model: Decoder, tmp: Path, files: list[Path], weight_map: dict[str, int], dtype_name: str,
            source: Path | None) -> None:
    """Names the shards as transformers expects, writes the index, config and tokenizer files."""
    if len(files) == 1:
        files[0].rename(tmp / SINGLE_FILE)
    else:
        names = [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
        total = sum(f.stat().st_size for f in files)
        for f, name in zip(files, names):
            f.rename(tmp / name)
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in weight_map.items()}}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (tmp / "config.json").write_text(json.dumps(_hf_config(model, dtype_name, source), indent=2))
    for fname in TOKENIZER_FILES:
        if source and (source / fname).is_file():
            shutil.copy2(source / fname, tmp / fname)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; the export should look like any other directory
    for f in tmp.iterdir():
        f.chmod(0o666 & ~umask)
