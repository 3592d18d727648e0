"""`python -m rlsc_jax.compare` on tiny random Qwen2 and Llama checkpoints: agreement, a perturbed weight, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlsc_jax import compare, hf
from tests.hf_models import make_chat_model_dir

REPO = Path(__file__).resolve().parents[1]
TEXTS = [f"Question {i}: what is {i} plus {i + 3}? The answer is {2 * i + 3}." for i in range(200)]
FAST = ["--tokens", "8", "--template", "plain"]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def family_model(request, tmp_path_factory):
    """(family, directory) of a tiny random 3-layer model with a ChatML tokenizer."""
    return request.param, make_chat_model_dir(tmp_path_factory.mktemp(request.param), TEXTS, family=request.param)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_chat_model_dir(tmp_path_factory.mktemp("qwen2"), TEXTS)


def _run(capsys, *argv):
    """(exit status, stdout, stderr) of the command run in this process."""
    status = compare.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# (extra arguments, figures' precision): each family runs the step once, in fp32 for one and bf16 for the other
CASES = {"qwen2": [(["--step"], "float32"), (["--dtype", "bfloat16"], "bfloat16")],
         "llama": [(["--step", "--dtype", "bfloat16"], "bfloat16"), (["--compute-dtype", "bfloat16", "--layers", "2"],
                                                                      "bfloat16")]}


@pytest.mark.parametrize("case", [0, 1])
def test_agrees_with_transformers(family_model, case, tmp_path, capsys):
    family, path = family_model
    extra, precision = CASES[family][case]
    status, out, err = _run(capsys, "--model", path, *FAST, *extra, "--json", tmp_path / "report.json")
    assert status == 0, out + err
    assert out.splitlines()[-1].startswith("verdict: PASS")
    assert os.listdir(tmp_path) == ["report.json"], "no temporary file left behind"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["precision"] == precision and report["failures"] == []
    layers = 2 if "--layers" in extra else 3
    assert report["layers"] == layers and len(report["forward"]["hidden_states"]) == layers + 1
    fwd, greedy = report["forward"], report["greedy"]
    assert fwd["first_diverging"] is None
    assert fwd["logits"]["max_abs"] < (1e-4 if precision == "float32" else 0.05 * fwd["logits"]["reference_max"])
    assert greedy["divergence"] is None or greedy["divergence"]["tie"]
    assert greedy["identical_leading"] == len(greedy["rlsc_jax_tokens"]) or greedy["divergence"] is not None
    if "--step" in extra:
        step = report["step"]
        assert len(step["logp"]["rlsc_jax"]) == len(step["logp"]["transformers"]) == 4
        bound = 1e-5 if precision == "float32" else 1e-2
        assert step["loss"]["relative"] < bound and step["grad_norm"]["relative"] < bound
        assert step["updated_params"]["worst"]["ratio"] <= 1
        assert "RLSC L2 step" in out


def test_perturbed_weight_fails_and_names_the_layer(model_dir, monkeypatch, tmp_path, capsys):
    """Layer 1's MLP output weight nudged on the Flax side only: layer 0 still agrees, layer 1 is named."""
    load = hf.load

    def perturbed(*args, **kwargs):
        model = load(*args, **kwargs)
        down = model.layers.mlp.down
        down[...] = down[...].at[1].add(0.05)
        return model

    monkeypatch.setattr(hf, "load", perturbed)
    status, out, _ = _run(capsys, "--model", model_dir, *FAST, "--json", tmp_path / "report.json")
    assert status == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["forward"]["first_diverging"] == "layer 1"
    assert report["forward"]["hidden_states"][1]["relative"] < 1e-5
    assert "diverge at layer 1" in out.splitlines()[-1] and out.splitlines()[-1].startswith("verdict: FAIL")


def _unsupported(path: Path, tmp_path: Path) -> Path:
    """A copy of the model whose config names an architecture this project does not implement."""
    target = tmp_path / "mistral"
    target.mkdir()
    for f in path.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(dict(config, model_type="mistral")))
    return target


@pytest.mark.parametrize("case,needle", [
    ("missing", "model directory not found"),
    ("unsupported", "unsupported model_type 'mistral'"),
    ("long prompt", "exceed the model's 256 positions"),
    ("layers", "--layers 9: the model has 3 layers"),
])
def test_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys, case, needle):
    args = {"missing": ["--model", tmp_path / "nowhere"],
            "unsupported": ["--model", _unsupported(model_dir, tmp_path)],
            "long prompt": ["--model", model_dir, "--prompt", " ".join(np.random.RandomState(0).choice(TEXTS, 60))],
            "layers": ["--model", model_dir, "--layers", "9"]}[case]
    report = tmp_path / "out" / "report.json"
    status, out, err = _run(capsys, *args, *FAST, "--json", report)
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert not report.parent.exists()


def test_without_pytorch_is_one_line_and_exit_2(model_dir, tmp_path):
    """`import torch` fails as it does where PyTorch is not installed (the real entry point, in a subprocess)."""
    report = tmp_path / "report.json"
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = ['compare', '--model', {str(model_dir)!r}, '--json', {str(report)!r}]; "
            "runpy.run_module('rlsc_jax.compare', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "PyTorch is not installed" in proc.stderr, proc.stderr
    assert not report.exists()


@pytest.mark.parametrize("where", ["directory", "unwritable"])
def test_an_unusable_json_path_fails_before_comparing(model_dir, tmp_path, capsys, monkeypatch, where):
    monkeypatch.setattr(compare, "measure", lambda *a: pytest.fail("compared despite an unusable --json"))
    report = tmp_path if where == "directory" else Path("/proc/rlsc_jax_test/report.json")
    status, out, err = _run(capsys, "--model", model_dir, *FAST, "--json", report)
    assert status == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("error: --json "), err
    assert list(tmp_path.iterdir()) == []
