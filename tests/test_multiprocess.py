"""Two JAX processes (4 CPU devices each, gloo collectives) train exactly like one process with 8 devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from rlsc_jax import synthetic_splits
from tests.hf_models import make_chat_model_dir

REPO = Path(__file__).resolve().parents[1]
STEPS, LR = 2, 3e-5
COMMON = [f"steps={STEPS}", f"optim.lr={LR}", "checkpoint_every=1", "plot=false", "questions_per_step=2",
          "sampling.num_samples=8", "sampling.max_new_tokens=12", "data.num_questions=16", "eval.num_questions=2",
          "eval.num_samples=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 300)]
    model = make_chat_model_dir(tmp_path / "model", texts)
    train = [sys.executable, str(REPO / "train.py"), f"model={model}", *COMMON]
    subprocess.run(train + [f"output_dir={tmp_path / 'one'}"], env=_env(8), check=True, capture_output=True)
    port = _free_port()
    procs = [subprocess.Popen(train + [f"output_dir={tmp_path / 'two'}", "--coordinator", f"127.0.0.1:{port}",
                                       "--num-processes", "2", "--process-id", str(i)],
                              env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    rows = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    assert len(rows[0]) == len(rows[1]) == STEPS
    for a, b in zip(*rows):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    one = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    diffs = np.concatenate([np.abs(two[name] - one[name]).ravel() for name in one])
    # Adam divides by sqrt(v): where a gradient is ~0, the other all-reduce order's roundoff can move an
    # element by up to ~lr per step, so a handful of elements may differ by that much and no more.
    assert diffs.max() <= 2 * STEPS * LR
    assert (diffs > 1e-6).mean() < 1e-3
