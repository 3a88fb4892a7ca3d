"""`ctxext demo --quick` end to end, and the embedded model it ships."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ctxext.cli import main
from ctxext.demo.run import demo_model_path
from ctxext.demo.searched import searched_factors
from ctxext.demo.synthetic import RULER_DEMO_TASKS, RULER_TASKS
from ctxext.evaluation.common import LengthBeyondWindowWarning
from ctxext.evaluation.passkey import evaluate_passkey
from ctxext.evaluation.ruler import evaluate_ruler
from pictures import assert_picture

#: the embedded model's RULER average at its own window (6 samples x 3 tasks, seed 7): RULER's threshold
RULER_AT_256 = 85.6


def test_the_embedded_model_retrieves_inside_its_window_and_not_at_8x():
    path = demo_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.max_position_embeddings == 256
    with pytest.warns(LengthBeyondWindowWarning, match="256-token window; length 2048 is beyond it"):
        report = evaluate_passkey([("base", model, tokenizer)], [256, 2048], depths=[0, 0.25, 0.5, 0.75, 1],
                                  trials=4, seed=7, progress=False)
    accuracy = {row["length"]: row["accuracy"] for row in report["summary"]}
    assert accuracy[256] >= 0.95 and accuracy[2048] <= 0.2, accuracy
    # RULER's needle tasks the demo reports: solved inside the window (fresh seed), lost at 8x
    with pytest.warns(LengthBeyondWindowWarning, match="256-token window; length 2048 is beyond it"):
        ruler = evaluate_ruler([("base", model, tokenizer)], [256, 2048], tasks=RULER_TASKS, samples=6, seed=7,
                               progress=False)
    average = {row["length"]: row["score"] for row in ruler["average"]}
    assert average[256] >= RULER_AT_256 and average[2048] <= 20.0, average
    assert ruler["effective_length"][0]["effective_length"] == 256


@pytest.mark.slow
def test_quick_demo_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--output", str(out)]) == 0  # the table even when quiet
    printed = capsys.readouterr().out
    report = json.loads((out / "demo.json").read_text())
    assert report["original_max_position_embeddings"] == 256 and report["factor"] == 8
    names = ["base", "pi", "ntk", "yarn", "longrope", "pi+lora", "yarn+lora"]
    assert [(r["model"], r["length"]) for r in report["rows"]] == [(n, L) for n in names for L in (256, 512, 1024, 2048)]
    for row in report["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["perplexity"] > 1 and 0 <= row["ruler"] <= 100
    assert report["ruler"]["tasks"] == list(RULER_DEMO_TASKS) and set(report["ruler"]["effective_length"]) == set(names)
    assert report["ruler"]["claimed_window"]["base"] == 256 and report["ruler"]["claimed_window"]["yarn"] == 2048
    # what README's "What the demo shows" claims, at quick settings (3 keys per cell, 60 fine-tune steps)
    acc = {(r["model"], r["length"]): r["accuracy"] for r in report["rows"]}
    ppl = {(r["model"], r["length"]): r["perplexity"] for r in report["rows"]}
    assert acc["base", 256] == 1.0 and acc["base", 2048] == 0.0  # every key inside its window, none at 8x
    assert all(acc["ntk", n] <= acc["base", n] for n in (256, 512, 1024)) and acc["ntk", 2048] == 0.0  # no help
    assert acc["yarn", 2048] > acc["base", 2048] and acc["yarn", 256] < acc["base", 256]  # 8x untrained, paid at 1x
    assert acc["longrope", 256] == 0.0 and acc["longrope", 2048] > acc["yarn", 2048]  # the switch at 1x; beats yarn at 8x
    assert all(ppl["longrope", n] < ppl["yarn", n] for n in (256, 512, 1024, 2048))
    assert all(acc["pi", n] == 0.0 for n in (256, 512, 1024, 2048)) and ppl["pi", 256] > 3 * ppl["base", 256]  # wrecked
    assert all(ppl["pi+lora", n] < ppl["pi", n] for n in (256, 512, 1024, 2048))  # the fine-tune repairs some of it
    assert acc["yarn+lora", 2048] > acc["base", 2048] and acc["yarn+lora", 2048] >= acc["yarn", 2048]
    assert ppl["yarn+lora", 2048] < min(ppl["base", 2048], ppl["pi+lora", 2048])
    # RULER: the base model's effective length is its window, the fine-tuned yarn model's at least 4x it
    ruler = {(r["model"], r["length"]): r["ruler"] for r in report["rows"]}
    effective = report["ruler"]["effective_length"]
    assert ruler["base", 256] == 100.0 and effective["base"] == 256
    assert effective["yarn+lora"] is not None and effective["yarn+lora"] >= 4 * effective["base"], effective
    assert all(ruler["yarn+lora", n] >= ruler["pi+lora", n] and acc["yarn+lora", n] >= acc["pi+lora", n]
               for n in (256, 512, 1024, 2048))  # yarn+lora at least pi+lora everywhere, after the same steps
    assert ruler["yarn+lora", 2048] < 100 * acc["yarn+lora", 2048]  # past the 1,024-token fine-tune RULER breaks first
    for name in names:
        assert name in printed
    assert report["longrope"]["long_factor"] == searched_factors()["long_factor"]
    for picture in ["passkey_accuracy.png", "perplexity.png"] + [f"passkey_heatmap_{n}.png" for n in ("base", "yarn", "longrope")]:
        assert_picture(out / picture)
    md = (out / "report.md").read_text()
    assert "| yarn+lora |" in md and "![accuracy vs length](passkey_accuracy.png)" in md
    assert "![RULER average vs length](ruler/ruler_average.png)" in md and "RULER average" in printed
    assert json.loads((out / "ruler" / "ruler.json").read_text())["settings"]["tasks"] == list(RULER_DEMO_TASKS)
    assert (out / "ruler" / "ruler_heatmap_yarn_lora.png").exists() and (out / "ruler" / "report.md").exists()
    assert (out / "models" / "yarn+lora" / "config.json").exists()
    # an existing output is refused, untouched
    assert main(["demo", "--quick", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "demo.json").exists()
