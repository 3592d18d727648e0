"""train.py end to end on a tiny chat model: outputs, resume after SIGKILL, and one-line errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from safetensors.numpy import load_file

import train
from rlsc_jax import hf, loop, synthetic_splits, training
from rlsc_jax.config import LONG_MODEL, load_config
from rlsc_jax.validation import validate
from rlsc_jax.data import load_questions
from rlsc_jax.files import LOCK
from rlsc_jax.loop import heldout_questions
from rlsc_jax.metrics import read_metrics
from rlsc_jax.objectives import OBJECTIVES
from rlsc_jax.sharding import axis_rules
from rlsc_jax.tokenizer import chat_prompt_ids, load_tokenizer
from tests.hf_models import make_chat_model_dir

REPO = Path(__file__).resolve().parents[1]
FAST = ["sampling.num_samples=8", "sampling.max_new_tokens=12", "data.num_questions=16"]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 300)]
    return make_chat_model_dir(tmp_path_factory.mktemp("chat"), texts)


def _train_cmd(model, out, *extra):
    return [sys.executable, str(REPO / "train.py"), f"model={model}", f"output_dir={out}", *FAST, *extra]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                XLA_FLAGS="--xla_force_host_platform_device_count=8")


def test_end_to_end_outputs(chat_model, tmp_path, capsys, monkeypatch):
    """Every output, the metrics mirrored to W&B (offline) and MLflow (a local file store) as in metrics.jsonl."""
    out, store = tmp_path / "run", (tmp_path / "mlruns").as_uri()
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": store,
                       "MLFLOW_ALLOW_FILE_STORE": "true"}.items():
        monkeypatch.setenv(key, value)
    code = train.main([f"model={chat_model}", f"output_dir={out}", "steps=3", "checkpoint_every=2",
                       "grad_terms_every=2", "eval.num_questions=4", "eval.num_samples=4", "eval.every=2",
                       "trackers=[tensorboard,wandb,mlflow]", *FAST])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    during = [sorted(k for k in r if k.startswith("eval")) for r in rows]  # held-out at step 2; 3 is eval_after
    assert during[0] == during[2] == [] and {"eval/greedy_accuracy", "eval/mean@4", "eval_seconds"} <= set(during[1])
    import mlflow
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    history = mlflow.MlflowClient(store).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["loss"]) for r in rows]
    after = json.loads((out / "eval_after.json").read_text())["metrics"]
    assert mlflow.MlflowClient(store).get_run(run_id).data.metrics["eval/mean_at_4"] == after["mean@4"]
    held_out = mlflow.MlflowClient(store).get_metric_history(run_id, "eval/mean_at_4")
    assert [m.step for m in held_out] == [0, 2, 3] and held_out[1].value == rows[1]["eval/mean@4"]
    assert list((out / "wandb").glob("offline-run-*/*.wandb"))
    terms = ("grad_norm_alpha_term", "grad_norm_p_old_term", "grad_terms_cosine")
    assert [all(k in r for k in terms) for r in rows] == [True, True, False]  # step 1, then every 2 steps
    for key in ("loss", "seq_logp_mean", "seq_logp_min", "p_old_underflow_frac", "mean_token_entropy",
                "mean_self_certainty", "truncated_frac", "completion_length", "distinct_answers", "majority_share",
                "grad_norm", "lr", "sample_seconds", "vote_seconds", "train_seconds", "tokens_per_second"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "3"]
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    for name in ("eval_before.json", "eval_after.json", "curves.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"done: 3 steps in {out} (metrics.jsonl, samples.jsonl, final/); curves: {out / 'curves.png'}")


def test_samples_jsonl_rows_and_a_resume_logs_each_step_once(chat_model, tmp_path, capsys):
    """samples.jsonl holds a row per step and question with every completion's fields; every show_samples_every
    steps the console shows the most and least likely completion; a rerun that redoes a step logs it once."""
    out = tmp_path / "run"
    args = [f"model={chat_model}", f"output_dir={out}", "steps=3", "checkpoint_every=2", "questions_per_step=2",
            "show_samples_every=2", "eval.num_questions=0", "plot=false", *FAST]
    assert train.main(args) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 1, 2, 2, 3, 3]
    for r in rows:
        assert r["id"] and r["question"] and r["prompt"] and len(r["completions"]) == 8
        shares = [c["vote_share"] for c in r["completions"]]
        for c in r["completions"]:
            assert set(c) == {"text", "logp", "length", "truncated", "answer", "vote_share"}
            assert c["logp"] <= 0 and 1 <= c["length"] <= 12 and (c["length"] == 12 or not c["truncated"])
            assert (c["vote_share"] is None) == (c["answer"] is None)
            if c["vote_share"] is not None:  # k of the 8 votes: every answer with that share has k samples
                k = round(c["vote_share"] * 8)
                assert k >= 1 and c["vote_share"] == k / 8 and shares.count(c["vote_share"]) % k == 0
    printed = capsys.readouterr().out
    assert "step 2, question" in printed and "step 1, question" not in printed
    assert "most likely " in printed and "least likely" in printed
    shutil.rmtree(out / "checkpoints" / "3")  # as if killed after logging step 3, before its checkpoint
    assert train.main(args) == 0
    assert "resuming from step 2" in capsys.readouterr().out
    again = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert again == rows  # step 3 redone exactly, logged once


def test_profile_steps_write_a_trace(chat_model, tmp_path):
    """profile_steps=[2] traces step 2 into <output_dir>/profile (an .xplane.pb for TensorBoard or Perfetto)."""
    out = tmp_path / "run"
    assert train.main([f"model={chat_model}", f"output_dir={out}", "steps=2", "profile_steps=[2]",
                       "questions_per_step=2", "eval.num_questions=0", "plot=false", "export_final=false", *FAST]) == 0
    assert list((out / "profile").rglob("*.xplane.pb"))


def test_remat_auto_says_what_it_chose(chat_model, tmp_path, capsys):
    """remat=auto compiles the step before training and reports the setting it trains with (on a CPU host with
    gigabytes free, the tiny model needs no recomputation)."""
    assert train.main([f"model={chat_model}", f"output_dir={tmp_path / 'run'}", "steps=1", "remat=auto",
                       "eval.num_questions=0", "plot=false", "export_final=false", *FAST]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("remat=auto"))
    assert line.startswith("remat=auto: remat off, grad_accum 1 (the cheapest that fits"), line


def test_default_run_smoke(tmp_path, capsys):
    """`python train.py` as shipped (model, batch, sampling), cut to 2 steps and a few held-out questions."""
    out = tmp_path / "default"
    assert train.main([f"output_dir={out}", "steps=2", "eval.num_questions=4"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and not any(r["skipped"] for r in rows)
    printed = capsys.readouterr().out
    assert "| greedy_accuracy |" in printed and "| mean_token_nll |" in printed
    assert (out / "curves.png").is_file() and (out / "final" / "model.safetensors").is_file()


def test_benchmark_heldout_uses_one_protocol_before_and_after(chat_model, tmp_path, capsys):
    """A JSONL held-out source is evaluated by the named protocol (greedy, 2048 new tokens capped at the model's
    256 positions), the same before and after, with its truncated fraction and the warning when above 5%."""
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"question": "1 + 1?", "answer": "2"}\n{"question": "2 + 3?", "answer": "5"}\n')
    out = tmp_path / "run"
    assert train.main([f"model={chat_model}", f"output_dir={out}", "steps=1", f"eval.source={heldout}",
                       "eval.num_questions=2", "plot=false", *FAST]) == 0
    printed = capsys.readouterr().out
    before, after = (json.loads((out / f"eval_{x}.json").read_text())["metrics"] for x in ("before", "after"))
    for result in (before, after):
        assert result["protocol"] == "qwen-math" and result["num_samples"] == 1
        assert 100 < result["max_new_tokens"] < 256 and 0 <= result["truncated_frac"] <= 1
    assert before["max_new_tokens"] == after["max_new_tokens"]
    assert "held-out evaluation: protocol qwen-math, before and after" in printed
    assert "| truncated_frac |" in printed and "| accuracy |" in printed
    if after["truncated_frac"] > 0.05:
        assert "warning: held-out after:" in printed


# the shipped default model, cut to 2 steps of 2 questions x 4 samples
SMALL_DEFAULT = ["steps=2", "questions_per_step=2", "sampling.num_samples=4", "data.num_questions=4",
                 "eval.num_questions=0", "plot=false", "export_final=false"]
DIAGNOSTICS = ("mean_token_entropy", "truncated_frac", "distinct_answers", "majority_share")


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_the_default_model(tmp_path, objective):
    """`python train.py objective=NAME` on the default config; every step logs the label-free diagnostics."""
    out = tmp_path / objective
    assert train.main([f"output_dir={out}", f"objective={objective}", *SMALL_DEFAULT]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and not any(r["skipped"] for r in rows)
    for key in ("loss", "grad_norm", *DIAGNOSTICS):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert all(0 <= r["truncated_frac"] <= 1 and 0 <= r["majority_share"] <= 1 for r in rows)
    assert all(1 <= r["distinct_answers"] <= 4 for r in rows)
    # the gradient-term diagnostic is off by default (it would cost two more gradients a logged step)
    assert not [k for r in rows for k in r if k.endswith("_term") or k.startswith("grad_terms")]


def test_mesh_rules_in_the_config_reach_load_sampler_and_step(tmp_path, monkeypatch):
    """`mesh.rules.*` place the loaded parameters (the embedding transposed across fsdp and tensor) and shard the
    sampler's rows over `data` only; the step's loss equals the default rules' run."""
    seen = []

    def spy_sample(model, *args, **kwargs):
        samples = real_sample(model, *args, **kwargs)
        seen[-1]["rows"] = samples.tokens.sharding.spec[0]
        return samples

    def spy_step(trainer, state, *args, **kwargs):
        seen.append({"rules": trainer.rules, "embed": state.params["embed"].get_value().sharding.spec})
        return real_step(trainer, state, *args, **kwargs)
    real_sample, real_step = training.sample, loop.rlsc_step
    monkeypatch.setattr(training, "sample", spy_sample)
    monkeypatch.setattr(loop, "rlsc_step", spy_step)
    mesh = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    override = ["mesh.rules.batch=[data]", "mesh.rules.embed=[tensor]", "mesh.rules.vocab=[fsdp]"]
    for name, rules in (("default", []), ("override", override)):
        assert train.main([f"output_dir={tmp_path / name}", *SMALL_DEFAULT, "steps=1", *mesh, *rules]) == 0
    default, changed = seen
    assert default == {"rules": axis_rules(), "embed": PartitionSpec("tensor", "fsdp"), "rows": ("data", "fsdp")}
    assert changed == {"rules": axis_rules({"batch": ["data"], "embed": ["tensor"], "vocab": ["fsdp"]}),
                       "embed": PartitionSpec("fsdp", "tensor"), "rows": "data"}
    losses = [read_metrics(tmp_path / name)[0]["loss"] for name in ("default", "override")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_long_config_loads():
    """configs/cpu_long.yaml: the long task for training and held-out questions, its model's positions hold the
    longest prompt plus the sampling budget."""
    cfg = load_config(REPO / "configs" / "cpu_long.yaml")
    validate(cfg)
    assert cfg.data.source == cfg.eval.source == "synthetic_long"
    assert cfg.model == LONG_MODEL  # ${asset:long_model}: the package's, from any directory
    heldout = heldout_questions(cfg)
    assert len(heldout) == cfg.eval.num_questions and heldout[0].id == "synthetic_long-heldout-0"
    tok = load_tokenizer(LONG_MODEL)
    longest = max(len(chat_prompt_ids(tok, q.question)) for q in load_questions(cfg.data.source, num_questions=100))
    assert longest + cfg.sampling.max_new_tokens <= hf.check(LONG_MODEL).max_position_embeddings


def test_long_config_trains_two_steps(tmp_path):
    """Two RLSC steps on the long config with the shipped long model, at full answer length: every sample's
    log p is far below −30, so p_old is negligible next to α (it need not underflow to exactly 0)."""
    out = tmp_path / "long"
    assert train.main(["--config", str(REPO / "configs" / "cpu_long.yaml"), f"model={LONG_MODEL}",
                       f"output_dir={out}", *SMALL_DEFAULT]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and not any(r["skipped"] for r in rows)
    for r in rows:
        assert r["completion_length"] > 100 and r["truncated_frac"] == 0
        assert r["seq_logp_mean"] < -30 and r["p_old_max"] < 1e-10 and 0 <= r["p_old_underflow_frac"] <= 1


def test_eval_offset_skips_the_first_heldout_questions():
    first = heldout_questions(load_config(None, ["eval.num_questions=8"]))
    later = heldout_questions(load_config(None, ["eval.num_questions=5", "eval.offset=3"]))
    assert [p.id for p in later] == [p.id for p in first[3:]]


def _final_params(out):
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(chat_model, tmp_path_factory):
    """The final parameters of a 4-step run that nothing interrupted, for the interrupted runs to equal."""
    whole = tmp_path_factory.mktemp("whole")
    subprocess.run(_train_cmd(chat_model, whole, "steps=4", "plot=false"), check=True, env=_env(), capture_output=True)
    return _final_params(whole)


def test_sigkill_and_resume_equals_uninterrupted(chat_model, uninterrupted, tmp_path):
    steps = ["steps=4", "checkpoint_every=1", "plot=false"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(chat_model, killed, *steps), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "2").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run was killed too late to test resuming"
    resumed = subprocess.run(_train_cmd(chat_model, killed, *steps), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stdout
    b = _final_params(killed)
    for name, a in uninterrupted.items():
        assert np.array_equal(a, b[name]), name
    steps_logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2, 3, 4]



def test_sigterm_saves_the_current_step_and_resuming_equals_uninterrupted(chat_model, uninterrupted, tmp_path):
    steps = ["steps=4", "checkpoint_every=100", "plot=false"]  # only the end and a preemption save
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(_train_cmd(chat_model, stopped, *steps), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics, deadline = stopped / "metrics.jsonl", time.time() + 300
    while not (metrics.is_file() and metrics.read_text().strip()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    saved = sorted(int(p.name) for p in (stopped / "checkpoints").iterdir())
    assert len(saved) == 1 and 1 <= saved[0] < 4, saved
    assert f"preempted (SIGTERM) after step {saved[0]}" in err and not (stopped / "final").exists()
    resumed = subprocess.run(_train_cmd(chat_model, stopped, *steps), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {saved[0]}" in resumed.stdout
    b = _final_params(stopped)
    for name, a in uninterrupted.items():
        assert np.array_equal(a, b[name]), name

BAD_FILES = {
    "EMPTY": ("empty.jsonl", ""),
    "TWO": ("two.jsonl", '{"question": "1 + 1?", "answer": "2"}\n{"question": "2 + 2?", "answer": "4"}\n'),
    "BADYAML": ("bad.yaml", "steps: [1\n"),
    "LISTYAML": ("list.yaml", "- steps\n- 3\n"),
    "NESTEDYAML": ("nested.yaml", "sampling:\n  num_samples: abc\n"),
    "SCALARYAML": ("scalar.yaml", "sampling: 5\n"),
    "AFILE": ("a_file", "not a directory"),
}
BAD_CONFIG_JSON = {"LISTJSON": [1, 2], "ROPESTRING": {"rope_scaling": "linear"}, "ABCHIDDEN": {"hidden_size": "abc"}}


@pytest.mark.parametrize("args,needle", [
    (["model=/nonexistent/model"], "/nonexistent/model"),
    (["objective=rlsc_l3"], "unknown objective 'rlsc_l3'"),
    (["mesh.data=3"], "mesh"),
    (["stepz=3"], "did you mean 'steps'"),
    (["data.source=EMPTY"], "empty"),
    (["eval.source=TWO", "eval.offset=2", "eval.num_questions=4"], "no questions after the first 2"),
    (["data.source=TWO", "data.offset=2"], "no questions after the first 2"),
    (["eval.offset=-1"], "eval.offset=-1"),
    (["data.offset=-1"], "data.offset=-1"),
    (["eval.max_new_tokens=-1"], "eval.max_new_tokens=-1"),
    (["eval.num_questions=-1"], "eval.num_questions=-1"),
    (["eval.num_questions=2", "eval.temperature=-1"], "eval.temperature=-1"),
    (["sampling.num_samples=0"], "sampling.num_samples=0"),
    (["profile_steps=[0]"], "profile_steps=[0]"),
    (["compute_dtype=fp16"], "compute_dtype='fp16'"),
    (["export_dtype=int8"], "export_dtype='int8'"),
    (["remat_policy=everything"], "remat_policy='everything'"),
    (["remat=sometimes"], "remat='sometimes': must be true, false or auto"),
    (["attention=flash"], "attention='flash': must be one of xla, cudnn"),
    (["attention=cudnn"], "bfloat16 or float16 with attention=cudnn"),
    (["attention=cudnn", "compute_dtype=bfloat16"], "attention=cudnn needs NVIDIA GPUs; this run's devices are cpu"),
    (["attention=splash"], "attention=splash needs TPUs; this run's devices are cpu"),
    (["optim.lr=nan"], "optim.lr=nan"),
    (["optim.lr=-1"], "optim.lr=-1"),
    (["sampling.temperature=0"], "sampling.temperature=0"),
    (["checkpoint_every=0"], "checkpoint_every"),
    (["eval.protocol=lighteval"], "unknown protocol 'lighteval'"),
    (["--config", "BADYAML"], "invalid YAML at line 2"),
    (["--config", "LISTYAML"], "expected a mapping of config keys"),
    (["--config", "NESTEDYAML"], "'sampling.num_samples'"),
    (["--config", "SCALARYAML"], "sampling must be a mapping"),
    (["output_dir=AFILE/run"], "a_file"),
    (["output_dir=/proc/rlsc_jax_test/run"], "/proc/rlsc_jax_test/run"),
    (["model=LISTJSON"], "expected a JSON object"),
    (["model=ROPESTRING"], "field 'rope_scaling'"),
    (["model=ABCHIDDEN"], "field 'hidden_size' must be a positive integer, got 'abc'"),
    (["objective_args.alpha=-1"], "objective_args.alpha=-1.0: must be finite and >= 0"),
    (["objective=ttrl", "objective_args.advantage_eps=0"], "objective_args.advantage_eps=0.0: must be finite and > 0"),
    (["alpha=0.2"], "config key 'alpha' is now 'objective_args.alpha'"),
    (["mesh.rules.embedd=[fsdp]"], "mesh.rules.embedd: unknown logical axis; known: batch, vocab, embed"),
    (["mesh.rules.mlp=[fsdpp]"], "mesh.rules.mlp=['fsdpp']: unknown mesh axis 'fsdpp'"),
    (["objective=self_certainty", "sampling.num_samples=1"], "sampling.num_samples >= 2"),
    ([f"seed={2**70}"], f"seed={2**70}: must be a 64-bit integer"),
    (["trackers=[tensorboard,neptune]"], "trackers: unknown tracker 'neptune'; known: tensorboard, wandb, mlflow"),
])
def test_bad_input_is_one_line_error(chat_model, tmp_path, capsys, args, needle):
    """Each is rejected with one line and exit 2 before any weight is loaded or any file written."""
    names = {}
    for name, (filename, text) in BAD_FILES.items():
        (tmp_path / filename).write_text(text)
        names[name] = str(tmp_path / filename)
    for name, change in BAD_CONFIG_JSON.items():
        shutil.copytree(chat_model, tmp_path / name)
        config = json.loads((chat_model / "config.json").read_text())
        (tmp_path / name / "config.json").write_text(json.dumps(change if isinstance(change, list) else config | change))
        names[name] = str(tmp_path / name)
    for name, path in names.items():
        args = [a.replace(name, path) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = train.main([f"model={chat_model}", f"output_dir={tmp_path / 'run'}", "steps=1", *FAST, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a rejected run must write nothing"
    assert Path(names["AFILE"]).is_file()


def test_consecutive_skipped_steps_stop_the_run_without_final(chat_model, tmp_path, capsys):
    """optim.lr=1e30: the first update overflows, every step after is skipped; the run stops with one line,
    exit 2, no final/, and every checkpoint it wrote holds finite weights."""
    out = tmp_path / "run"
    code = train.main([f"model={chat_model}", f"output_dir={out}", "steps=6", "checkpoint_every=1",
                       "optim.lr=1e30", "max_skipped_steps=2", "eval.num_questions=0", "plot=false", *FAST])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and err.startswith("error: ") and "steps in a row skipped" in err, err
    assert not (out / "final").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows][-2:] == [1, 1]
    from rlsc_jax import hf
    from rlsc_jax.checkpoints import Checkpointer
    from rlsc_jax.config import load_config as load
    from rlsc_jax.sharding import make_mesh
    from rlsc_jax.training import Trainer
    trainer, state = Trainer.create(hf.load(chat_model), load(None, FAST), make_mesh())
    ckpt = Checkpointer(out / "checkpoints", 2)
    restored, _ = ckpt.restore(ckpt.latest_step(), state.to_checkpoint())
    ckpt.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["params"]))


def test_resuming_past_the_export_re_exports_final(chat_model, tmp_path):
    """steps=2 then steps=4 in the same output_dir: final/ holds the step-4 weights, as a straight 4-step run's."""
    common = [f"model={chat_model}", "eval.num_questions=0", "plot=false", "checkpoint_every=1", *FAST]
    out, straight = tmp_path / "resumed", tmp_path / "straight"
    assert train.main([*common, f"output_dir={out}", "steps=2"]) == 0
    at_two = load_file(str(out / "final" / "model.safetensors"))
    assert train.main([*common, f"output_dir={out}", "steps=4"]) == 0
    assert train.main([*common, f"output_dir={straight}", "steps=4"]) == 0
    resumed, want = (load_file(str(d / "final" / "model.safetensors")) for d in (out, straight))
    assert any(not np.array_equal(at_two[n], resumed[n]) for n in at_two), "final/ still holds the step-2 weights"
    assert all(np.array_equal(resumed[n], want[n]) for n in want)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [LOCK]  # no export leftovers
