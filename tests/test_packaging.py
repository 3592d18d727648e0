"""What a fresh clone or an installed wheel needs: the shipped benchmarks as the default data, configs by name
from any directory, and command lines that answer `--help` without importing JAX."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlsc_jax.benchmarks import BENCHMARK_DIR, BENCHMARKS
from rlsc_jax.config import DEFAULT_MODEL, LONG_MODEL, TrainConfig, config_dir, load_config
from rlsc_jax.data import load_questions

REPO = Path(__file__).resolve().parents[1]


def test_default_data_dir_is_the_shipped_benchmarks():
    assert Path(TrainConfig().data.data_dir) == BENCHMARK_DIR == REPO / "rlsc_jax" / "data" / "benchmarks"
    assert {p.name for p in BENCHMARK_DIR.iterdir()} >= {"LICENSE-evaluation-data.txt", "README.md"}
    counts = {name: len(load_questions(name, data_dir=TrainConfig().data.data_dir, answer_field="answer"))
              for name in BENCHMARKS}
    assert counts == {"aime24": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675,
                      "gsm8k": 1319}


def test_paper_configs_need_no_data_flag():
    for name in ("paper_qwen25_math_7b", "paper_qwen25_math_1.5b"):
        assert Path(load_config(name).data.data_dir) == BENCHMARK_DIR


def test_configs_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_dir() == REPO / "configs"
    assert load_config("cpu_default") == TrainConfig()
    assert load_config("configs/cpu_long.yaml").model == LONG_MODEL == load_config("cpu_long.yaml").model
    assert load_config("cpu_default", ["model=${asset:long_model}"]).model == LONG_MODEL != DEFAULT_MODEL
    with pytest.raises(FileNotFoundError, match="nope.yaml: config file not found.*cpu_default, cpu_long"):
        load_config("nope.yaml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config("elsewhere/cpu_default.yaml")  # a path with another folder is a path, never a name


@pytest.mark.parametrize("module", ["rlsc_jax.eval", "rlsc_jax.train", "rlsc_jax.paper", "rlsc_jax.plan",
                                    "rlsc_jax.compare", "rlsc_jax.diagnostics", "rlsc_jax.pretrain",
                                    "rlsc_jax.experiment"])
def test_help_imports_no_jax(module):
    code = (f"import sys; from {module} import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_eval_help_lists_every_setting():
    from rlsc_jax.eval import SETTING_NAMES
    from rlsc_jax.eval_cli import EvalRunConfig
    assert SETTING_NAMES == tuple(k for k in EvalRunConfig().flat() if k != "mesh")


def test_module_commands_name_themselves():
    out = subprocess.run([sys.executable, "-m", "rlsc_jax.plan", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.startswith("usage: python -m rlsc_jax.plan ")


def test_compare_reads_a_shipped_benchmark_without_data_dir():
    from rlsc_jax.benchmarks import load_benchmark
    from rlsc_jax.compare import parse_args, prompt_text
    question = prompt_text(parse_args(["--model", "m", "--benchmark", "aime24"]))
    assert question == load_benchmark("aime24", BENCHMARK_DIR, limit=1)[0].question


def test_wheel_ships_every_asset_benchmark_and_config():
    """pyproject's package-data globs cover every file the commands read from the package (no build needed)."""
    import tomllib
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = set()
    for package, patterns in tool["package-data"].items():
        folder = REPO / tool["package-dir"].get(package, package.replace(".", "/"))
        shipped |= {f for pattern in patterns for f in folder.glob(pattern) if f.is_file()}
    needed = {f for d in ("rlsc_jax/assets", "rlsc_jax/data", "configs") for f in (REPO / d).rglob("*") if f.is_file()}
    assert needed - shipped == set()
    assert set(tool["packages"]) >= {"rlsc_jax", "rlsc_jax.models", "rlsc_jax.configs"}
