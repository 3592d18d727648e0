"""What a run shows a person: the before/after table and the plots (axis labels, accuracy in %, legends)."""

from rlsc_jax import plotting
from rlsc_jax.report import before_after_table


def test_before_after_table_leaves_out_rows_that_repeat_mean_at_n():
    before = {"num_samples": 4, "mean@4": 0.5, "maj@1": 0.5, "maj@2": 0.5, "maj@4": 0.6, "pass@1": 0.5, "pass@4": 0.8}
    after = {k: v + 0.1 for k, v in before.items()}
    rows = [line.split(" | ")[0].lstrip("| ") for line in before_after_table(before, after).splitlines()[2:-1]]
    assert rows == ["mean@4", "maj@2", "maj@4", "pass@4"]
    assert before_after_table(before, after).splitlines()[-1].startswith("maj@2 is mean@N except")


def _figure(monkeypatch, draw):
    """The figure `draw()` made, kept open to inspect."""
    kept = []
    monkeypatch.setattr(plotting.plt, "close", kept.append)
    draw()
    return kept[0]


def test_run_curves_label_axes_and_draw_fractions_in_percent(tmp_path, monkeypatch):
    step = {"loss": 1.0, "seq_logp_mean": -5.0, "mean_token_entropy": 0.3, "majority_share": 0.5,
            "completion_length": 9.0}
    rows = [{"step": 1, **step}, {"step": 2, **step, "eval/greedy_accuracy": 0.375, "eval/mean@4": 0.625},
            {"step": 3, **step}]
    result = {"steps": 3, "before": {"num_samples": 4, "greedy_accuracy": 0.25, "mean@4": 0.5},
              "after": {"num_samples": 4, "greedy_accuracy": 0.5, "mean@4": 0.75}}
    fig = _figure(monkeypatch, lambda: plotting.plot_run(rows, result, tmp_path / "curves.png"))
    assert all(ax.get_ylabel() for ax in fig.axes)
    assert fig.axes[3].lines[0].get_ydata()[0] == 50  # majority share, in %
    held_out = fig.axes[-1]  # before (step 0), during (step 2), after (step 3), in %
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in held_out.lines] == [
        ([0, 2, 3], [25, 37.5, 50]), ([0, 2, 3], [50, 62.5, 75])]
    assert [t.get_text() for t in held_out.get_legend().get_texts()] == ["greedy_accuracy", "mean@4"]


def test_pass_at_k_of_one_sample_is_one_point_with_one_legend_entry(tmp_path, monkeypatch):
    curves = {"greedy": {"aime24": {"num_samples": 1, "accuracy": 0.5}}}
    fig = _figure(monkeypatch, lambda: plotting.plot_pass_at_k(curves, tmp_path / "pass_at_k.png"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["greedy (1 sample)"]
    assert list(ax.lines[0].get_ydata()) == [50] and ax.get_ylabel() == "% of problems"
