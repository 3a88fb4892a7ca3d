"""The evaluation's pictures: the data on the Figure is the data given, and the PNG is a real picture."""

import numpy as np
import pytest

import ctxext.evaluation.plots as plots
from pictures import assert_picture


@pytest.fixture
def figures(monkeypatch):
    """Every Figure a plot function saves, kept for inspection (and still written to disk)."""
    kept = []
    save = plots._save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def test_heatmap_shows_accuracy_per_depth_and_length(tmp_path, figures):
    results = [
        {"model": "m", "length": length, "depth": depth, "trial": trial, "correct": correct}
        for length, depth, trial, correct in [
            (256, 0.0, 0, True), (256, 0.0, 1, True), (256, 1.0, 0, True), (256, 1.0, 1, False),
            (1024, 0.0, 0, False), (1024, 0.0, 1, False), (1024, 1.0, 0, True), (1024, 1.0, 1, True),
        ]
    ] + [{"model": "other", "length": 256, "depth": 0.0, "trial": 0, "correct": False}]
    path = plots.passkey_heatmap(results, "m", tmp_path / "heat.png")
    (fig,) = figures
    (ax,) = [a for a in fig.axes if a.images]
    np.testing.assert_allclose(ax.images[0].get_array(), [[1.0, 0.0], [0.5, 1.0]])  # [depth, length], "other" left out
    assert [t.get_text() for t in ax.get_xticklabels()] == ["256", "1024"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0%", "100%"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.50", "1.00", "1.00"]
    assert "2 trials per cell" in ax.get_title()
    assert_picture(path)
    assert not list(tmp_path.glob(".*"))  # written through a temporary file, nothing left over


def test_line_plots_draw_one_line_per_model_at_the_given_points(tmp_path, figures):
    summary = [{"model": "base", "length": n, "accuracy": a} for n, a in [(512, 1.0), (256, 1.0), (1024, 0.25)]]
    summary += [{"model": "yarn", "length": n, "accuracy": a} for n, a in [(256, 0.5), (512, 0.75), (1024, 1.0)]]
    plots.accuracy_vs_length(summary, tmp_path / "acc.png")
    ppl = [{"model": "base", "length": n, "perplexity": p} for n, p in [(256, 3.0), (1024, 40.0)]]
    plots.perplexity_vs_length(ppl, tmp_path / "ppl.png")
    accuracy, perplexity = (fig.axes[0] for fig in figures)
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in accuracy.get_lines()}
    assert lines == {"base": ([256, 512, 1024], [1.0, 1.0, 0.25]), "yarn": ([256, 512, 1024], [0.5, 0.75, 1.0])}
    assert accuracy.get_xscale() == "log" and list(accuracy.get_xticks()) == [256, 512, 1024]
    (line,) = perplexity.get_lines()
    assert (list(line.get_xdata()), list(line.get_ydata())) == ([256, 1024], [3.0, 40.0])
    assert perplexity.get_yscale() == "log"
    for name in ("acc.png", "ppl.png"):
        assert_picture(tmp_path / name)


def test_a_failed_save_leaves_neither_the_picture_nor_a_temporary_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.perplexity_vs_length([{"model": "m", "length": 8, "perplexity": 2.0}], tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []
