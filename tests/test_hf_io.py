"""HF checkpoint I/O: HF -> Flax -> HF round trip, sharded index files, and bad inputs."""

import json
import os
import shutil

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

from rlsc_jax import hf
from tests.hf_models import VOCAB, make_hf_model, save_hf_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A saved tiny untied Qwen2 and its transformers model."""
    ref = make_hf_model("qwen2")
    return ref, save_hf_model(ref, tmp_path_factory.mktemp("src"))


def _tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("shard_bytes", [hf.DEFAULT_SHARD_BYTES, 30_000])
@pytest.mark.parametrize("family,overrides", [("qwen2", {}), ("llama", {"tie_word_embeddings": True})])
def test_round_trip_bit_exact_and_reloadable(tmp_path, family, overrides, shard_bytes):
    ref = make_hf_model(family, **overrides)
    src = save_hf_model(ref, tmp_path / "src")
    (src / "tokenizer_config.json").write_text("{}")
    out = hf.save(hf.load(src), tmp_path / "out", max_shard_bytes=shard_bytes, source=src)
    assert (out / "tokenizer_config.json").is_file(), "tokenizer files must be copied through"
    source_config = json.loads((src / "config.json").read_text())
    assert json.loads((out / "config.json").read_text())["bos_token_id"] == source_config["bos_token_id"]
    assert (out / hf.INDEX_FILE).is_file() == (shard_bytes < hf.DEFAULT_SHARD_BYTES)
    a, b = _tensors(src), _tensors(out)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor(np.random.RandomState(0).randint(0, VOCAB, (2, 10)))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, ref(ids).logits)
    again = hf.load(out)
    assert np.array_equal(np.asarray(again(jnp.asarray(ids.numpy()))), np.asarray(hf.load(src)(jnp.asarray(ids.numpy()))))


def test_bf16_round_trip(tmp_path, ckpt):
    _, src = ckpt
    out = hf.save(hf.load(src, dtype=jnp.bfloat16), tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = hf.load(out, dtype="bfloat16")
    assert np.array_equal(np.asarray(reloaded.embed[...]), np.asarray(hf.load(src, dtype=jnp.bfloat16).embed[...]))


def test_export_in_another_dtype(tmp_path, ckpt):
    _, src = ckpt
    model = hf.load(src)
    out = hf.save(model, tmp_path / "out", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    for name, arr in _tensors(out).items():
        assert arr.dtype == ml_dtypes.bfloat16, name
    want = {m.hf_name: a.astype(ml_dtypes.bfloat16) for m, a in hf.hf_tensors(model)}
    assert all(np.array_equal(_tensors(out)[n], want[n]) for n in want)
    assert model.embed[...].dtype == jnp.float32, "the masters stay fp32"


def test_load_first_layers_only(ckpt):
    """`num_layers` keeps the first layers (bit-equal to the full model's) and matches a truncated transformers
    model; a count outside 1..layers is a one-line error."""
    ref, src = ckpt
    full, first = hf.load(src), hf.load(src, num_layers=2)
    assert first.cfg.num_layers == 2 and first.layers.mlp.up[...].shape[0] == 2
    assert np.array_equal(np.asarray(first.layers.attn.q[...]), np.asarray(full.layers.attn.q[...][:2]))
    truncated = AutoModelForCausalLM.from_pretrained(str(src), num_hidden_layers=2).eval()
    ids = np.random.RandomState(0).randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        want = truncated(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(first(jnp.asarray(ids))) - want).max() < 1e-4
    for bad in (0, ref.config.num_hidden_layers + 1):
        with pytest.raises(ValueError) as excinfo:
            hf.load(src, num_layers=bad)
        assert "num_layers" in _error(excinfo)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg, f"error must be one line: {msg!r}"
    return msg


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        hf.load(tmp_path / "nope")
    assert "nope" in _error(e)


def test_missing_config(tmp_path, ckpt):
    d = _copy(ckpt[1], tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        hf.load(d)
    assert "config.json" in _error(e)


def test_missing_safetensors(tmp_path, ckpt):
    d = _copy(ckpt[1], tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as e:
        hf.load(d)
    assert "model.safetensors" in _error(e)


def test_truncated_safetensors(tmp_path, ckpt):
    d = _copy(ckpt[1], tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError) as e:
        hf.load(d)
    assert "model.safetensors" in _error(e)


def test_corrupt_header(tmp_path, ckpt):
    d = _copy(ckpt[1], tmp_path / "m")
    data = bytearray((d / "model.safetensors").read_bytes())
    data[8:40] = b"\xff" * 32
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError) as e:
        hf.load(d)
    assert "corrupt" in _error(e)


def test_index_naming_missing_shard(tmp_path, ckpt):
    out = hf.save(hf.load(ckpt[1]), tmp_path / "out", max_shard_bytes=30_000)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError) as e:
        hf.load(out)
    assert victim.name in _error(e)


def _rewrite(d, fn):
    tensors = load_file(str(d / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_wrong_shape(tmp_path, ckpt):
    d = _copy(ckpt[1], tmp_path / "m")
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite(d, lambda t: t.__setitem__(name, t[name][:-1]))
    with pytest.raises(ValueError) as e:
        hf.load(d)
    assert name in _error(e) and "shape" in _error(e)


def test_integer_weight(tmp_path, ckpt):
    """An int32 weight would be cast to float and trained on: refused, naming the tensor and the file."""
    d = _copy(ckpt[1], tmp_path / "m")
    name = "model.layers.0.mlp.down_proj.weight"
    _rewrite(d, lambda t: t.__setitem__(name, t[name].astype(np.int32)))
    with pytest.raises(ValueError) as e:
        hf.check(d)
    assert _error(e) == (f"{d / 'model.safetensors'}: tensor {name!r} has dtype I32, expected a float "
                         f"(F16, BF16, F32, F64)")


def test_missing_tensor(tmp_path, ckpt):
    d = _copy(ckpt[1], tmp_path / "m")
    name = "model.layers.0.self_attn.k_proj.bias"
    _rewrite(d, lambda t: t.pop(name))
    with pytest.raises(ValueError) as e:
        hf.load(d)
    assert name in _error(e) and "missing" in _error(e)


def test_unexpected_tensor(tmp_path, ckpt):
    d = _copy(ckpt[1], tmp_path / "m")
    _rewrite(d, lambda t: t.__setitem__("model.layers.9.mlp.extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(ValueError) as e:
        hf.load(d)
    assert "model.layers.9.mlp.extra.weight" in _error(e)


@pytest.mark.parametrize("patch,needle", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_config(tmp_path, ckpt, patch, needle):
    d = _copy(ckpt[1], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(patch)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        hf.load(d)
    assert needle in _error(e) and "config.json" in _error(e)


def test_save_refuses_non_empty_directory(tmp_path, ckpt):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError) as e:
        hf.save(hf.load(ckpt[1]), target)
    assert "out" in _error(e)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_save_failure_leaves_nothing(tmp_path, ckpt, monkeypatch):
    model = hf.load(ckpt[1])

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(hf, "save_file", boom)
    with pytest.raises(OSError):
        hf.save(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_saved_files_follow_the_umask(tmp_path, ckpt):
    umask = os.umask(0)
    os.umask(umask)
    out = hf.save(hf.load(ckpt[1]), tmp_path / "out")
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in out.iterdir())
