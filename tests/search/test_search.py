"""search_factors end to end on a tiny checkpoint: the stock longrope checkpoint it writes reloads with the
logits, loss and guard the search measured in memory; a search killed mid-way resumes to the same result;
`ctxext train DIR --method keep` fine-tunes the searched checkpoint without re-patching it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ctxext.errors import CtxextError
from ctxext.search.evaluator import FrequencyEvaluator
from ctxext.search.objectives import needle_documents
from ctxext.search.run import search_factors, state_dir
from ctxext.search.space import Candidate
from ctxext.training.finetune import finetune
from tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
L0, FACTOR = 64, 4.0
SETTINGS = dict(objective="perplexity", samples=2, population=6, generations=2, seed=1, progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def text(seed: int) -> str:
    import random

    rng = random.Random(seed)
    words = "the cat sees a red ball and the dog follows my friend down the long road to a quiet house".split()
    return " ".join(rng.choice(words) for _ in range(120)) + "."


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    tiny_model("llama", initializer_range=0.1).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": text(i)}) + "\n" for i in range(3)))
    return root


@pytest.fixture(scope="module")
def searched(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "longrope"
    result = search_factors(str(source / "model"), FACTOR, str(source / "docs.jsonl"), out, **SETTINGS)
    return result, out


def documents(source, n=2, length=256):
    tokenizer = tiny_tokenizer()
    rows = [json.loads(line)["text"] for line in (source / "docs.jsonl").read_text().splitlines()]
    return [tokenizer(t)["input_ids"][:length] for t in rows[:n]]


def test_the_checkpoint_is_stock_longrope_with_the_found_factors(searched):
    result, out = searched
    config = json.loads((out / "config.json").read_text())
    rope = config["rope_parameters"]
    assert rope["rope_type"] == "longrope" and config["rope_scaling"]["rope_type"] == "longrope"
    assert rope["long_factor"] == result.long_factor and rope["short_factor"] == [1.0] * 8
    assert rope["attention_factor"] == result.attention_factor and rope["factor"] == FACTOR
    f = result.long_factor
    assert f[0] >= 1.0 and all(a <= b for a, b in zip(f, f[1:]))
    assert result.loss <= min(s["loss"] for s in result.seeds)
    assert [s["method"] for s in result.seeds] == ["pi", "ntk", "ntk-by-parts", "yarn", "llama3"]
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert len(log) == result.evaluations == 6 + 2 * 3
    assert min(r["loss"] for r in log) == result.loss
    saved = json.loads((out / "search.json").read_text())
    assert saved["long_factor"] == result.long_factor and saved["perplexity"] == pytest.approx(result.perplexity)
    assert (out / "factors.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "README.md").read_text()
    assert "## Factor search" in card and "longrope" in card and f"{result.long_factor[-1]:g}" in card
    assert not state_dir(out).exists()


def test_stock_transformers_reloads_the_logits_loss_and_guard_the_search_measured(searched, source):
    result, out = searched
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    memory = tiny_model("llama", initializer_range=0.1)
    evaluator = FrequencyEvaluator(memory)
    best = Candidate(tuple(result.long_factor), result.attention_factor)
    docs = documents(source)
    with torch.inference_mode():
        long_ids, short_ids = torch.tensor(docs), torch.tensor([d[:L0] for d in docs])
        evaluator.set(best)
        torch.testing.assert_close(stock(long_ids).logits, memory(long_ids).logits, rtol=0, atol=0)
        evaluator.set(best, short=True)  # inside the original window: short_factor 1, same attention factor
        torch.testing.assert_close(stock(short_ids).logits, memory(short_ids).logits, rtol=0, atol=0)
        # the objective and the guard, recomputed with transformers' own loss on the reloaded checkpoint
        loss = sum(float(stock(torch.tensor([d]), labels=torch.tensor([d])).loss) for d in docs) / len(docs)
        windows = [d[i : i + L0] for d in docs for i in range(0, 256, L0)]
        inside = sum(float(stock(torch.tensor([w]), labels=torch.tensor([w])).loss) for w in windows) / len(windows)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.guard["perplexity"] == pytest.approx(torch.tensor(inside).exp().item(), rel=1e-5)
    assert result.guard["perplexity"] <= result.guard["limit"]


def test_the_needle_objective_scores_the_hidden_keys_answer_as_stock_transformers_does(source, tmp_path):
    out = tmp_path / "needle"
    result = search_factors(str(source / "model"), FACTOR, str(source / "docs.jsonl"), out,
                            **{**SETTINGS, "objective": "needle", "population": 4, "generations": 1})
    assert result.objective == "needle" and result.loss <= min(s["loss"] for s in result.seeds)
    tokenizer = tiny_tokenizer()
    docs = needle_documents(tokenizer, documents(source, n=2, length=300), 256, seed=1)
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    total = count = 0.0
    with torch.inference_mode():
        for d in docs:
            ids = torch.tensor([d.input_ids])
            logits = stock(ids).logits[0]
            for t in d.scored:  # the key's tokens, predicted from the position before each
                total -= float(torch.log_softmax(logits[t - 1], -1)[ids[0, t]])
                count += 1
    assert count == 2 * 6  # " " and five digits, one character token each, in 2 documents
    assert result.loss == pytest.approx(total / count, rel=1e-5)


def test_train_keep_fine_tunes_the_searched_checkpoint_with_its_own_factors(searched, source, tmp_path):
    result, out = searched
    tuned = finetune(str(out), "keep", None, str(source / "docs.jsonl"), tmp_path / "tuned", seq_len=128,
                     max_steps=2, learning_rate=1e-3, warmup_steps=0, save_every=0, cache_dir=tmp_path / "cache",
                     progress=False)
    rope = json.loads((tmp_path / "tuned" / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == "longrope" and rope["long_factor"] == result.long_factor
    assert rope["attention_factor"] == result.attention_factor
    assert tuned.log[-1]["step"] == 2


def test_a_model_in_memory_is_left_patched_with_the_result(source):
    model = tiny_model("llama", initializer_range=0.1)
    result = search_factors(model, FACTOR, str(source / "docs.jsonl"), tokenizer=tiny_tokenizer(),
                            **{**SETTINGS, "generations": 0})
    assert result.output_dir is None and result.generations == 0
    assert model.config.rope_parameters["rope_type"] == "longrope"
    assert list(model.config.rope_parameters["long_factor"]) == result.long_factor
    with pytest.raises(CtxextError, match="already uses longrope"):
        search_factors(model, FACTOR, str(source / "docs.jsonl"), tokenizer=tiny_tokenizer(), **SETTINGS)


KILLED = """
import os, signal
from ctxext.search.run import search_factors

def die(record):
    if (record["generation"], record["index"]) == (2, 1):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler runs

search_factors({model!r}, {factor!r}, {data!r}, {out!r}, on_evaluation=die, **{settings!r})
"""


@pytest.mark.slow
def test_a_search_killed_mid_way_resumes_to_the_uninterrupted_result(searched, source, tmp_path):
    straight, straight_out = searched
    out = tmp_path / "resumed"
    script = KILLED.format(model=str(source / "model"), factor=FACTOR, data=str(source / "docs.jsonl"), out=str(out),
                           settings=SETTINGS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists() and (state_dir(out) / "state.json").exists()
    with pytest.raises(CtxextError, match="holds an interrupted search"):
        search_factors(str(source / "model"), FACTOR, str(source / "docs.jsonl"), out, **SETTINGS)
    with pytest.raises(CtxextError, match=r"objective \('perplexity' then, 'needle' now\) changed"):
        search_factors(str(source / "model"), FACTOR, str(source / "docs.jsonl"), out, resume=True,
                       **{**SETTINGS, "objective": "needle", "length": 256})
    resumed = search_factors(str(source / "model"), FACTOR, str(source / "docs.jsonl"), out, resume=True, **SETTINGS)
    assert (resumed.long_factor, resumed.attention_factor, resumed.loss) == \
        (straight.long_factor, straight.attention_factor, straight.loss)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                          for line in (path / "search_log.jsonl").read_text().splitlines()]
    assert strip(out) == strip(straight_out)
    config = lambda path: json.loads((path / "config.json").read_text())["rope_parameters"]
    assert config(out) == config(straight_out)
