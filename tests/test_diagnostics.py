"""Gradient diagnostics: the streamed statistics equal a direct computation, and the command runs end to end."""

import json

import numpy as np
import pytest

from rlsc_jax import diagnostics, synthetic_splits
from tests.hf_models import make_chat_model_dir


def test_streamed_statistics_equal_the_direct_computation():
    rs = np.random.RandomState(0)
    shared = rs.normal(size=50)
    grads = [[shared + q * rs.normal(size=50) + rs.normal(size=50) for _ in range(6)] for q in range(4)]
    means = [np.mean(g, axis=0) for g in grads]
    units = [m / np.linalg.norm(m) for m in means]
    stats = diagnostics.summarize([[g @ g for g in gs] for gs in grads], [np.sum(gs, 0) @ np.sum(gs, 0) for gs in grads],
                                  np.sum(units, 0) @ np.sum(units, 0))
    for gs, mean, got in zip(grads, means, stats["questions"]):
        noise = np.mean([np.sum((g - mean) ** 2) for g in gs]) * len(gs) / (len(gs) - 1)
        np.testing.assert_allclose(got["noise"], noise, rtol=1e-10)
        np.testing.assert_allclose(got["signal"], mean @ mean - noise / len(gs), rtol=1e-10)
    cosines = [units[i] @ units[j] for i in range(4) for j in range(4) if i != j]
    np.testing.assert_allclose(stats["mean_cosine"], np.mean(cosines), rtol=1e-10)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 200)]
    return make_chat_model_dir(tmp_path_factory.mktemp("chat"), texts)


def test_command_writes_finite_statistics(chat_model, tmp_path):
    out = tmp_path / "stats.json"
    code = diagnostics.main(["--questions", "3", "--draws", "2", "--output", str(out), f"model={chat_model}",
                             "sampling.num_samples=8", "sampling.max_new_tokens=8", "mesh.fsdp=4", "mesh.data=2"])
    stats = json.loads(out.read_text())
    assert code == 0 and len(stats["questions"]) == 3
    assert all(np.isfinite(q["noise"]) and q["noise"] > 0 for q in stats["questions"])
    assert -1 <= stats["mean_cosine"] <= 1


def test_logp_profile_of_training_samples(chat_model, tmp_path, capsys):
    """`--logp`: N samples of each training question as a step draws them, with their log p profile."""
    out = tmp_path / "logp.json"
    code = diagnostics.main(["--logp", "--questions", "2", "--threshold", "-5", "--output", str(out),
                             f"model={chat_model}", "sampling.num_samples=4", "sampling.max_new_tokens=8"])
    stats = json.loads(out.read_text())
    assert code == 0 and stats["seq_logp"]["samples"] == 8 and stats["seq_logp"]["threshold"] == -5
    assert stats["samples"]["problems"] == 2 and stats["samples"]["num_samples"] == 4
    assert 0 <= stats["seq_logp"]["below_threshold_frac"] <= 1 and stats["seq_logp"]["median"] < 0
    printed = capsys.readouterr().out
    assert "8 samples at T = 0.5: log p median" in printed and "mean@4" in printed


@pytest.mark.parametrize("args,needle", [
    (["--draws", "1"], "at least 2 questions and 2 draws"),
    (["sampling.num_samples=4"], "divisible by mesh.data * mesh.fsdp = 8"),
    (["--output", "/proc/rlsc_jax_test/stats.json"], "--output /proc/rlsc_jax_test/stats.json: cannot write in /proc"),
])
def test_bad_settings_are_one_line_errors(chat_model, tmp_path, capsys, args, needle):
    out = tmp_path / "stats.json"
    assert diagnostics.main(["--output", str(out), *args, f"model={chat_model}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert not out.exists()
