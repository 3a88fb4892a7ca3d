"""`ctxext info` and the per-dimension table."""

import json

import pytest

from ctxext.cli import main
from ctxext.patching.info import describe, dimension_table
from ctxext.rope.functions import yarn_ramp
from checkpoints import save_checkpoint
from pictures import assert_picture


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("g") / "gemma", "gemma3_text")


def test_describe_a_per_layer_type_model(gemma):
    summary = describe(json.loads((gemma / "config.json").read_text()))
    assert summary["model_type"] == "gemma3_text" and summary["rotary_dim"] == 16
    assert summary["scaled_layer_types"] == ["full_attention"]
    assert summary["rope"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert summary["original_max_position_embeddings"] == summary["window"] == 64 and summary["scaling"] == "default"


def test_json_output_after_a_patch(gemma, tmp_path, capsys):
    assert main(["patch", str(gemma), "--method", "pi", "--factor", "4", "--output", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "o"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scaling"] == "pi" and summary["window"] == 256 and summary["original_max_position_embeddings"] == 64
    assert summary["ctxext"]["factor"] == 4.0


def test_dimension_table_follows_the_yarn_ramp(tmp_path):
    src = save_checkpoint(tmp_path / "llama", "llama", head_dim=64, hidden_size=256, max_position_embeddings=4096)
    rows = dimension_table(json.loads((src / "config.json").read_text()), "yarn", 8)
    ramp = yarn_ramp(64, 10000.0, 4096, 32.0, 1.0).tolist()
    assert len(rows) == 32
    for row, r in zip(rows, ramp):
        assert row["kind"] == ("kept" if r == 0 else "interpolated" if r == 1 else "blended")
        assert row["new_wavelength"] == pytest.approx(row["wavelength"] / row["ratio"])
    kept = [row for row in rows if row["kind"] == "kept"]
    assert all(row["rotations_in_window"] > 32 for row in kept)  # beta_fast


def test_text_table_and_plot(tmp_path, capsys, monkeypatch):
    import ctxext.patching.info

    figures = []
    save = ctxext.patching.info.save_figure
    monkeypatch.setattr(ctxext.patching.info, "save_figure", lambda fig, path: figures.append(fig) or save(fig, path))
    src = save_checkpoint(tmp_path / "llama", "llama")
    plot = tmp_path / "dims.png"
    assert main(["info", str(src), "--method", "pi", "--factor", "8", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "effective window  64" in out and "0 kept, 0 blended, 8 interpolated" in out
    (ax,) = figures[0].axes
    rows = dimension_table(json.loads((src / "config.json").read_text()), "pi", 8)
    (points,) = ax.collections  # the interpolated dims: pi divides every frequency by 8
    assert points.get_offsets().tolist() == [[r["dim"], r["new_wavelength"]] for r in rows]
    assert sorted(line.get_ydata()[0] for line in ax.get_lines()[1:]) == [64, 512]  # original and new window
    assert_picture(plot)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dims.png", "llama"]  # no temporary file left


def test_info_bad_input(tmp_path, capsys):
    src = save_checkpoint(tmp_path / "llama", "llama")
    assert main(["info", str(src), "--method", "yarn"]) == 2
    assert "--method and --factor go together" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["info", str(src), "--plot", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
