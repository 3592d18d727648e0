"""train.py under faults: changed settings on resume, another mesh, a corrupt checkpoint, Ctrl-C during a save,
an error mid-run, a non-finite state, a second run on the same output dir, a missing run record, no checkpoint
that restores. Each case ends with one line and never loses the last checkpoint."""

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import train
from rlsc_jax import loop, synthetic_splits, training
from rlsc_jax.checkpoints import Checkpointer
from rlsc_jax.config import load_config
from rlsc_jax.files import exclusive_dir
from rlsc_jax.run_record import check_resume, make_record, write_record
from tests.hf_models import make_chat_model_dir

REPO = Path(__file__).resolve().parents[1]
FAST = ["sampling.num_samples=4", "sampling.max_new_tokens=8", "data.num_questions=8", "questions_per_step=2",
        "eval.num_questions=0", "plot=false", "checkpoint_every=1"]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    texts = [p.question + " " + p.solution for p in synthetic_splits.split_problems("pretrain", 300)]
    return make_chat_model_dir(tmp_path_factory.mktemp("chat"), texts)


def _run(model, out, *extra) -> int:
    return train.main([f"model={model}", f"output_dir={out}", *FAST, *extra])


def _final(out: Path) -> dict:
    return load_file(str(out / "final" / "model.safetensors"))


def _last_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


def _steps(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_a_rerun_with_changed_settings_is_refused_naming_the_keys(chat_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(chat_model, out, "steps=1") == 0
    config, record = (out / "config.yaml").read_text(), (out / "run.json").read_text()
    assert _run(chat_model, out, "steps=2", "objective=rlsc_l1", "sampling.temperature=0.9") == 2
    err = _last_error(capsys)
    assert "objective: 'rlsc_l2' -> 'rlsc_l1'" in err and "sampling.temperature: 0.5 -> 0.9" in err, err
    other = tmp_path / "other_weights"
    shutil.copytree(chat_model, other)
    weights = load_file(str(other / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] + 1
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    assert _run(other, out, "steps=2") == 2
    assert "model files changed: model.safetensors" in _last_error(capsys)
    assert (out / "config.yaml").read_text() == config and (out / "run.json").read_text() == record
    assert _steps(out) == ["1"]
    moved = tmp_path / "moved_model"  # the same files elsewhere: the path is not the model's identity
    shutil.copytree(chat_model, moved)
    assert _run(moved, out, "steps=2", "checkpoint_every=5", "keep_checkpoints=3", "eval.num_questions=2",
                "eval.num_samples=2", "logprob_chunk=64") == 0
    assert "resuming from step 1" in capsys.readouterr().out


def test_a_record_made_before_objective_args_moved_still_resumes(tmp_path):
    """run.json written when `alpha` and `advantage_eps` were top-level keys matches their `objective_args.*` now;
    a changed value is still refused, under its new name."""
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    record = make_record(cfg)
    record["settings"] = {k.removeprefix("objective_args."): v for k, v in record["settings"].items()}
    assert "alpha" in record["settings"]
    write_record(tmp_path, record)
    assert check_resume(tmp_path, cfg, resuming=True)["settings"] == make_record(cfg)["settings"]
    cfg.objective_args.alpha = 0.2
    with pytest.raises(ValueError, match=r"\(objective_args.alpha: 0.1 -> 0.2\)"):
        check_resume(tmp_path, cfg, resuming=True)


def test_a_record_made_before_a_key_was_added_resumes_at_its_default(tmp_path):
    """A setting added to the schema after run.json was written counts as its default (the behaviour the run had);
    the same run at another value of it is refused."""
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    record = make_record(cfg)
    del record["settings"]["data.offset"]
    write_record(tmp_path, record)
    check_resume(tmp_path, cfg, resuming=True)
    cfg.data.offset = 3
    with pytest.raises(ValueError, match=r"\(data.offset: 0 -> 3\)"):
        check_resume(tmp_path, cfg, resuming=True)


def test_resume_onto_another_mesh(chat_model, tmp_path):
    """Steps 1-2 on an 8-way FSDP mesh, step 3 on data=2 x fsdp=4: the same weights as 3 steps on one mesh
    up to reduction order."""
    a, b = tmp_path / "switched", tmp_path / "straight"
    assert _run(chat_model, a, "steps=2", "mesh.fsdp=8") == 0
    assert _run(chat_model, a, "steps=3", "mesh.data=2", "mesh.fsdp=4") == 0
    assert _run(chat_model, b, "steps=3", "mesh.fsdp=8") == 0
    got, want = _final(a), _final(b)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=2e-6, err_msg=name)


def test_a_resumed_run_holds_one_copy_of_the_train_state(chat_model, tmp_path, monkeypatch):
    """At its first step a resumed run holds the arrays a fresh run holds at its first: the restored state, not
    also the initial parameters it replaced (a name that held the loaded module once kept them for the whole
    run, a third more memory than the state's parameters and Adam moments)."""
    beyond_state = {}
    train_steps = loop._train

    def probe(cfg, trainer, state, start, *args, **kwargs):
        gc.collect()
        live = sum(x.nbytes for x in jax.live_arrays())
        beyond_state[start] = live - sum(x.nbytes for x in jax.tree.leaves(state) if isinstance(x, jax.Array))
        return train_steps(cfg, trainer, state, start, *args, **kwargs)

    monkeypatch.setattr(loop, "_train", probe)
    out = tmp_path / "run"
    assert _run(chat_model, out, "steps=1") == 0
    assert _run(chat_model, out, "steps=2") == 0
    params = sum(x.nbytes for x in load_file(str(out / "final" / "model.safetensors")).values())
    assert sorted(beyond_state) == [0, 1]
    assert beyond_state[1] - beyond_state[0] < params / 10, (beyond_state, params)


def test_the_after_evaluation_runs_without_the_optimizer_state(chat_model, tmp_path, monkeypatch):
    """Adam's moments (twice the parameters) are released once training ends, before the export and the
    after-evaluation, which need the parameters alone."""
    moments, alive = [], []
    train_steps, evaluate = loop._train, loop.evaluate

    def trained(*args, **kwargs):
        state = train_steps(*args, **kwargs)
        moments.extend(weakref.ref(x) for x in jax.tree.leaves(state.opt_state) if isinstance(x, jax.Array))
        return state

    def probe(*args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in moments))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "_train", trained)
    monkeypatch.setattr(loop, "evaluate", probe)
    assert _run(chat_model, tmp_path / "run", "steps=1", "eval.num_questions=2", "eval.num_samples=2") == 0
    assert len(moments) > 2 and alive == [0, 0]  # before (no moments yet), after


@pytest.mark.parametrize("damage", ["truncate_array", "delete_metadata"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(chat_model, tmp_path, capsys, damage):
    out, straight = tmp_path / "run", tmp_path / "straight"
    assert _run(chat_model, out, "steps=2", "export_final=false") == 0
    state = out / "checkpoints" / "2" / "state"
    if damage == "truncate_array":
        biggest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        os.truncate(biggest, biggest.stat().st_size // 2)
    else:
        (state / "_METADATA").unlink()
    capsys.readouterr()
    assert _run(chat_model, out, "steps=3") == 0
    printed = capsys.readouterr().out
    assert "checkpoint 2 does not restore" in printed and "resuming from step 1" in printed, printed
    assert "2.unreadable" in _steps(out)
    assert _run(chat_model, straight, "steps=3") == 0
    got, want = _final(out), _final(straight)
    assert all(np.array_equal(got[n], want[n]) for n in want)


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                XLA_FLAGS="--xla_force_host_platform_device_count=8")


def test_ctrl_c_during_a_save_keeps_the_checkpoint_and_exits_130(chat_model, tmp_path, interruptible_popen):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), f"model={chat_model}", f"output_dir={out}", *FAST, "steps=4"]
    proc = interruptible_popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (out / "checkpoints").is_dir() and any(p.name.startswith("2") for p in (out / "checkpoints").iterdir()):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), lines
    assert _steps(out) == ["1", "2"]
    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resuming from step 2" in resumed.stdout, resumed.stderr


def test_an_error_mid_run_keeps_the_last_checkpoint(chat_model, tmp_path):
    """The 4th question is too long for the model: step 4 fails with one line, exit 2, no hang, and
    checkpoint 3 is complete."""
    data = tmp_path / "q.jsonl"
    rows = [{"question": f"What is {i} plus {i}?"} for i in range(3)] + [{"question": "word " * 400}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), f"model={chat_model}", f"output_dir={out}", *FAST, "steps=4",
           f"data.source={data}", "data.num_questions=4", "data.shuffle=false", "questions_per_step=1", "sampling.num_samples=8"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert done.returncode == 2 and len(lines) == 1 and "exceeds the model's" in lines[0], done.stderr
    assert _steps(out) == ["2", "3"]


def test_a_non_finite_state_stops_the_run_before_it_is_saved(chat_model, tmp_path, capsys, monkeypatch):
    """Adam's second moment poisoned with inf at step 2 (loss, gradient and lr stay finite, so the step's
    own guard lets the update through): the run stops at step 2 with one line and saves nothing of it."""
    step = training.Trainer._step

    def poisoned(self, state, batch, temperature, **options):
        adam = state.opt_state[0]
        leaves, tree = jax.tree.flatten(adam.nu)
        leaves[0] = jnp.where(training._step_count(state.opt_state) == 1, jnp.inf, leaves[0])
        opt = (adam._replace(nu=jax.tree.unflatten(tree, leaves)), *state.opt_state[1:])
        return step(self, state.replace(opt_state=opt), batch, temperature, **options)

    monkeypatch.setattr(training.Trainer, "_step", poisoned)
    out = tmp_path / "run"
    assert _run(chat_model, out, "steps=4") == 2
    assert "step 2 made parameters or optimizer state non-finite" in _last_error(capsys)
    assert _steps(out) == ["1"] and not (out / "final").exists()


def test_a_second_run_on_a_held_output_dir_fails_at_once(chat_model, tmp_path, capsys):
    """Another command holds the output dir: train.py stops with one line and exit 2, writing nothing there.
    Then a run whose run.json is deleted is not resumed."""
    out = tmp_path / "run"
    with exclusive_dir(out, "output_dir"):
        assert _run(chat_model, out, "steps=1") == 2
        assert "is in use by another run (process " in _last_error(capsys)
        assert [p.name for p in out.iterdir()] == [".lock"]
    assert _run(chat_model, out, "steps=1") == 0
    (out / "run.json").unlink()  # the rlsc_l2 checkpoint is not resumed as rlsc_l1's, nor run.json rewritten
    assert _run(chat_model, out, "steps=2", "objective=rlsc_l1") == 2
    assert f"{out / 'run.json'} is missing" in _last_error(capsys)
    assert not (out / "run.json").exists() and _steps(out) == ["1"]


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import signal, sys\nfrom rlsc_jax.files import exclusive_dir\n"
                               "with exclusive_dir(sys.argv[1], 'output_dir'):\n    print(flush=True)\n"
                               "    signal.pause()", str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    with pytest.raises(ValueError, match=f"in use by another run \\(process {holder.pid}\\)"):
        with exclusive_dir(out, "output_dir"):
            pass
    holder.kill()
    holder.wait()
    with exclusive_dir(out, "output_dir"):
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("record", [None, "{not json", "\xff\xfe", "[1, 2]"])
def test_checkpoints_without_a_readable_record_are_not_resumed(tmp_path, record):
    """With run.json gone or garbage the checkpoints' settings are unknown: resuming them under today's
    settings is refused, naming the file; with no checkpoints the record is simply rewritten."""
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    if record is not None:
        (tmp_path / "run.json").write_bytes(record.encode("latin-1"))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'run.json'}.* the settings of the checkpoints in") as e:
        check_resume(tmp_path, cfg, resuming=True)
    assert "\n" not in str(e.value)
    assert check_resume(tmp_path, cfg, resuming=False) == make_record(cfg)


def test_a_restart_because_no_checkpoint_restores_says_so(tmp_path, capsys):
    directory = tmp_path / "checkpoints"
    state = {"w": jnp.ones(3)}
    ckpt = Checkpointer(directory, keep=3)
    for step in (1, 2):
        ckpt.save(step, state, {"step": step})
    ckpt.close()
    for step in (1, 2):
        shutil.rmtree(directory / str(step) / "state")
    ckpt = Checkpointer(directory, keep=3)
    assert ckpt.restore_latest(state) == (0, None, None)
    ckpt.close()
    assert capsys.readouterr().out.splitlines()[-1] == (f"no checkpoint in {directory} restores (2 moved aside): "
                                                        "starting again from step 0")
