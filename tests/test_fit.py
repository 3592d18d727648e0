"""`remat: auto` (rlsc_jax.fit): the cheapest setting whose compiled step fits, chosen without running anything."""

import dataclasses
import functools

import jax
import pytest
from flax import nnx

from rlsc_jax import fit, plan
from rlsc_jax.config import load_config
from rlsc_jax.models import Decoder, ModelConfig
from rlsc_jax.sharding import make_run_mesh
from rlsc_jax.training import Trainer

SHAPE = (16, 64, 64)  # rows, prompt width, completion width


@pytest.fixture(scope="module")
def abstract_trainer():
    cfg = load_config(None, ["questions_per_step=2", "sampling.num_samples=8", "remat=auto"])
    model = nnx.eval_shape(lambda: Decoder(ModelConfig.from_file(cfg.model), rngs=nnx.Rngs(0)))
    return Trainer.create(model, cfg, make_run_mesh(cfg, devices=jax.devices()[:1]))


@pytest.fixture(scope="module")
def peaks(abstract_trainer):
    """fit.peak_bytes by (remat, grad_accum), each setting compiled once for the module."""
    trainer, state = abstract_trainer
    compiled_peak = fit.peak_bytes

    @functools.cache
    def peak(remat, grad_accum):
        return compiled_peak(dataclasses.replace(trainer, remat=remat, grad_accum=grad_accum), state, *SHAPE)
    return peak


def test_chooses_the_cheapest_setting_that_fits(abstract_trainer, peaks, monkeypatch):
    trainer, state = abstract_trainer
    monkeypatch.setattr(fit, "peak_bytes", lambda t, *_: peaks(t.remat, t.grad_accum))
    assert peaks(None, 1) > peaks("dots", 1) > peaks("nothing", 1)  # the premise: each policy saves memory
    scale = 1 / (1 - fit.HEADROOM)
    chosen, tried = fit.fit(trainer, state, *SHAPE, (peaks("dots", 1) + peaks("nothing", 1)) / 2 * scale)
    assert (chosen.remat, chosen.grad_accum) == ("nothing", 1) and len(tried) == 3, tried
    chosen, tried = fit.fit(trainer, state, *SHAPE, 2 * peaks(None, 1) * scale)
    assert (chosen.remat, chosen.grad_accum) == (None, 1) and len(tried) == 1, tried
    # nothing fits at grad_accum 1: twice the accumulation, cheapest policy first
    below = 0.99 * peaks("nothing", 1) * scale
    chosen, tried = fit.fit(trainer, state, *SHAPE, below)
    assert chosen.grad_accum == 2 and peaks(chosen.remat, 2) <= below / scale, tried
    assert all(peaks(r, 1) > below / scale for r in fit.POLICIES)
    assert fit.report(chosen, tried, below).startswith(f"remat=auto: remat {chosen.remat or 'off'}, grad_accum 2")


def test_nothing_fits_is_one_clear_error(abstract_trainer, monkeypatch):
    trainer, state = abstract_trainer
    monkeypatch.setattr(fit, "peak_bytes", lambda *_: 2 * 1024**3)
    with pytest.raises(ValueError, match=r"remat=auto: no setting fits .* tried remat off, grad_accum 1: 2.0 GiB; "
                                         r".*remat nothing, grad_accum 16: 2.0 GiB\. Use more devices"):
        fit.fit(trainer, state, *SHAPE, 1024**3)


def test_plan_needs_hardware_for_auto(capsys):
    assert plan.main(["remat=auto", "--devices", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: remat=auto: give --hardware") and "\n" not in err, err
