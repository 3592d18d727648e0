"""Two JAX processes (4 CPU devices each, gloo collectives) train exactly like one process with 8 devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from rlsc_jax import synthetic
from tests.hf_models import make_chat_model_dir

REPO = Path(__file__).resolve().parents[1]
COMMON = ["steps=2", "checkpoint_every=1", "plot=false", "sampling.num_samples=8", "sampling.max_new_tokens=12",
          "data.num_questions=16", "eval.num_questions=2", "eval.num_samples=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    texts = [p.question + " " + p.solution for p in synthetic.split_problems("pretrain", 300)]
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
    one = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    for name in one:
        np.testing.assert_allclose(two[name], one[name], atol=1e-6, err_msg=name)
    assert (tmp_path / "one" / "metrics.jsonl").read_text().count("\n") == 2
    assert (tmp_path / "two" / "metrics.jsonl").read_text().count("\n") == 2
