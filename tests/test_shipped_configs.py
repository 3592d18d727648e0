"""Every config in configs/ runs one step, with its own keys (remat, grad_accum, dtypes, mesh, objective,
data source, the benchmarks shipped in the package), on a tiny stand-in model with short answers."""

from pathlib import Path

import pytest

import train
from rlsc_jax import synthetic_splits
from tests.hf_models import make_chat_model_dir

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 300)]
    return make_chat_model_dir(tmp_path_factory.mktemp("chat"), texts, max_position_embeddings=2048)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_runs_one_step(config, chat_model, tmp_path):
    out = tmp_path / "run"
    code = train.main(["--config", str(config), f"model={chat_model}", f"output_dir={out}", "steps=1",
                       "data.num_questions=2", "sampling.max_new_tokens=16",
                       "eval.num_questions=0", "plot=false"])
    assert code == 0
    assert (out / "metrics.jsonl").read_text().count("\n") == 1
    assert (out / "final" / "model.safetensors").is_file()
