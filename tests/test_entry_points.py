"""The seven commands share one convention (rlsc_jax.cli.run_command): bad input is one `error:` line on stderr
and exit code 2, before any work."""

import pytest

from rlsc_jax import compare, diagnostics, eval as eval_cmd, experiment, plan, pretrain, train


@pytest.mark.parametrize("main, args", [
    (train.main, ["--config", "{missing}.yaml"]),
    (eval_cmd.main, ["--model", "{missing}"]),
    (plan.main, ["--config", "{missing}.yaml"]),
    (pretrain.main, ["--output", "{tmp}/out", "--task", "medium"]),
    (experiment.main, ["--config", "{missing}.yaml", "--output", "{tmp}/out"]),
    (compare.main, ["--model", "{missing}"]),
    (diagnostics.main, ["--config", "{missing}.yaml"]),
], ids=["train", "eval", "plan", "pretrain", "experiment", "compare", "diagnostics"])
def test_bad_input_is_one_error_line_and_exit_2(main, args, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in args]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a rejected command must write nothing"
