"""Config schema: shipped YAML files parse, the CPU config is the embedded default, errors name keys."""

from pathlib import Path

import pytest

from rlsc_jax.config import OptimConfig, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_cpu_config_is_the_embedded_default():
    cfg = load_config(CONFIGS / "cpu_default.yaml")
    default = TrainConfig()
    assert Path(cfg.model).resolve() == Path(default.model).resolve()
    cfg.model = default.model
    assert cfg == default


@pytest.mark.parametrize("name,steps", [("paper_qwen25_math_7b.yaml", 10), ("paper_qwen25_math_1.5b.yaml", 20)])
def test_paper_configs(name, steps):
    cfg = load_config(CONFIGS / name)
    assert (cfg.steps, cfg.sampling.num_samples, cfg.sampling.temperature) == (steps, 16, 0.5)
    assert (cfg.sampling.max_new_tokens, cfg.optim.lr, cfg.objective) == (3072, 1e-5, "rlsc_l2")
    assert cfg.objective_args.alpha == 0.1
    assert (cfg.data.source, cfg.data.num_questions, cfg.mesh.fsdp, cfg.questions_per_step) == ("aime24", 0, -1, 1)
    assert (cfg.sampling.top_k, cfg.sampling.top_p) == (50, 1.0)  # transformers' defaults under generate()


def test_overrides_apply_after_the_file():
    cfg = load_config(CONFIGS / "cpu_default.yaml", ["steps=3", "mesh.tensor=2", "sampling.temperature=0.7"])
    assert (cfg.steps, cfg.mesh.tensor, cfg.sampling.temperature) == (3, 2, 0.7)


@pytest.mark.parametrize("overrides,message", [
    (["stepz=3"], "unknown config key 'stepz'; did you mean 'steps'?"),
    (["optim.learning_rate=1"], "unknown config key 'optim.learning_rate'"),
    (["mesh.fsdpp=2"], "did you mean 'mesh.fsdp'?"),
    (["steps=many"], "bad value for 'steps'"),
    (["steps"], "expected key=value"),
    (["alpha=0.2"], "command line: config key 'alpha' is now 'objective_args.alpha'"),
    (["advantage_eps=0.1"], "config key 'advantage_eps' is now 'objective_args.advantage_eps'"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(ValueError) as e:
        load_config(None, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_moved_key_in_a_file_names_its_new_key(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("objective: rlsc_l2\nalpha: 0.2\n")
    with pytest.raises(ValueError, match=r"old.yaml: config key 'alpha' is now 'objective_args.alpha'$"):
        load_config(path)
    assert load_config(None, ["objective_args.alpha=0.2"]).objective_args.alpha == 0.2


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_bad_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 2\nsampling: {temprature: 1.0}\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown config key 'sampling.temprature'; did you mean "
                                         r"'sampling.temperature'"):
        load_config(path)


def test_a_non_utf8_config_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("steps: 3\nname: café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"^{path}: not UTF-8 text \\(byte 0xe9 at offset 18\\)$"):
        load_config(path)


def test_resumable_fields_are_left_out_of_a_runs_record():
    """Fields marked `resumable` (whole sections too) may change on resume; every other key is recorded."""
    from rlsc_jax.run_record import trajectory_settings
    keys = trajectory_settings(TrainConfig())
    assert not {"output_dir", "steps", "logprob_chunk", "data.data_dir", "mesh.fsdp", "mesh.rules",
                "eval.offset"} & keys.keys()
    assert {"seed", "dtype", "sampling.temperature", "optim.lr", "data.source", "objective_args.alpha"} <= keys.keys()
    cosine = TrainConfig(optim=OptimConfig(schedule="cosine"))
    assert trajectory_settings(cosine)["steps"] == 30  # a decaying schedule's length changes the trajectory
