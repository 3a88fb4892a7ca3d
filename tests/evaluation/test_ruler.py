"""RULER: exact prompts and needles, the published wording, scoring, the effective length, batched
decoding against model.generate, an oracle that solves the needle tasks inside its window, files,
resume and bad input."""

from __future__ import annotations

import collections
import json
import random
import re
import string

import pytest
import torch

from ctxext.errors import CtxextError
from ctxext.evaluation.decoding import GreedyDecoder
from ctxext.evaluation.ruler import (
    SYNTHETIC,
    TASKS,
    RulerRunner,
    build_ruler_prompts,
    effective_length,
    evaluate_ruler,
    ruler_table,
    string_match_all,
    string_match_part,
)
from ctxext.evaluation.ruler.haystack import NOISE, essay_sentences, word_lists
from ctxext.evaluation.ruler.qa import read_qa_file
from ctxext.evaluation.ruler.tasks import NEEDLE, RulerPromptBuilder
from evalkit import InductionOracle, byte_tokenizer, one_thread, tiny_llama, trained_tokenizer  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::ctxext.evaluation.common.LengthBeyondWindowWarning")


def ruler_corpus() -> tuple[str, ...]:
    """RULER's text for the test tokenizers: templates, needles, chains, words, the essay's start."""
    rng = random.Random(0)
    builder = RulerPromptBuilder(byte_tokenizer())
    lines = []
    for name in SYNTHETIC:
        for sample in range(2):
            lines.append(byte_tokenizer().decode(builder.build(name, 4096 if name != "cwe" else 8192, sample).input_ids[1:]))
    lines += [NEEDLE.format(type_v="numbers", key=f"{rng.choice(word_lists()['adjectives'])}-x", value=rng.randint(10**6, 10**7))
              for _ in range(50)]
    return tuple(lines) + tuple(essay_sentences()[:200]) + (string.ascii_letters + string.digits + "-:'`",)


TOKENIZERS = {
    "bytes": byte_tokenizer,
    "bpe": lambda: trained_tokenizer("bpe", 900, ruler_corpus()),
    "metaspace": lambda: trained_tokenizer("metaspace", 900, ruler_corpus()),
}
_made: dict[str, object] = {}


def tokenizer_of(kind: str):
    if kind not in _made:
        _made[kind] = TOKENIZERS[kind]()
    return _made[kind]


#: lengths each task fills with the byte tokenizer (cwe needs the most: its one-shot example and list)
LENGTHS = {"vt": 2100, "cwe": 3000}


def length_of(task: str) -> int:
    return LENGTHS.get(task, 1100)


# -- prompts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
@pytest.mark.parametrize("task", SYNTHETIC)
def test_prompts_have_exact_lengths_and_the_needles_where_the_records_say(kind, task):
    tokenizer = tokenizer_of(kind)
    length = length_of(task) + (300 if kind == "metaspace" and task == "cwe" else 0)
    prompts = build_ruler_prompts(task, tokenizer, length, samples=3, seed=5)
    spec = TASKS[task]
    for p in prompts:
        assert p.tokens + p.max_new_tokens == length and p.max_new_tokens == spec.max_new_tokens
        text = tokenizer.decode(p.input_ids, skip_special_tokens=True)
        if kind != "metaspace":  # the assembled ids are the tokenizer's own for that text
            assert list(tokenizer(text).input_ids) == list(p.input_ids)
        depths = [n.depth for n in p.needles]
        assert depths == sorted(depths) and all(0.0 <= d <= 1.0 for d in depths)
        for needle in p.needles:
            assert needle.text in tokenizer.decode(p.input_ids[needle.start : needle.end])
        for q in prompts:  # the first `shared` tokens are every sample's
            assert p.input_ids[: min(p.shared, q.shared)] == q.input_ids[: min(p.shared, q.shared)]
        if spec.family == "niah":
            assert len(p.needles) == spec.keys * spec.values
            for value in p.expected:
                assert any(value in n.text for n in p.needles)
            assert text.endswith("mentioned in the provided text " + ("is" if spec.values * spec.queries == 1 else "are"))
        elif task == "vt":
            assert len(p.expected) == 5 and [n.text.split()[1] for n in p.needles] == list(p.expected)
            value = p.needles[0].text.split("= ")[1]
            assert text.endswith(f"5 variables are assigned the value {value}, they are: ")
        elif task == "cwe":
            question = text.rsplit("Below is a numbered list of words.", 1)[1]
            counts = collections.Counter(re.findall(r"\d+\. (\w+)", question))
            top = [w for w, _ in counts.most_common(10)]
            assert sorted(top) == sorted(p.expected)
            assert min(counts[w] for w in p.expected) > max(c for w, c in counts.items() if w not in p.expected)
        elif task == "fwe":
            body = text.split("Find the three most frequently appeared coded words.", 1)[1].split("\nQuestion:")[0]
            counts = collections.Counter(body.split())
            ranked = [w for w, _ in counts.most_common() if w != "..."]
            assert counts["..."] > counts[ranked[0]] and ranked[:3] == list(p.expected)


def test_the_published_wording_singular_and_plural():
    tokenizer = byte_tokenizer()
    single = tokenizer.decode(build_ruler_prompts("niah_single_1", tokenizer, 1100)[0].input_ids, skip_special_tokens=True)
    assert single.startswith("A special magic number is hidden within the following text. Make sure to memorize it. "
                             "I will quiz you about the number afterwards.\nThe grass is green.")
    assert re.search(r"\nWhat is the special magic number for [\w-]+ mentioned in the provided text\? The special magic "
                     r"number for [\w-]+ mentioned in the provided text is$", single)
    assert f"\n{NOISE}\n" in single and re.search(r"\nOne of the special magic numbers for [\w-]+ is: \d{7}\.\n", single)
    many = tokenizer.decode(build_ruler_prompts("niah_multiquery", tokenizer, 2000)[0].input_ids, skip_special_tokens=True)
    assert many.startswith("Some special magic numbers are hidden within the following text.")
    assert re.search(r"What are all the special magic numbers for [\w-]+, [\w-]+, [\w-]+, and [\w-]+ mentioned", many)
    uuids = build_ruler_prompts("niah_multikey_3", tokenizer, 1100)[0]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuids.expected[0])
    haystack_lines = tokenizer.decode(uuids.input_ids, skip_special_tokens=True).split("\n")[1:-1]
    assert sum(line.startswith("One of the special magic uuids for ") for line in haystack_lines) >= len(haystack_lines) - 1
    essay = tokenizer.decode(build_ruler_prompts("niah_single_2", tokenizer, 1100)[0].input_ids, skip_special_tokens=True)
    assert "Alice was beginning to get very tired" in essay


def test_prompts_are_seeded_per_sample_and_leave_the_global_generator_alone():
    tokenizer = byte_tokenizer()
    state = random.getstate()
    a = build_ruler_prompts("niah_multikey_1", tokenizer, 1500, samples=4, seed=3)
    assert random.getstate() == state
    b = build_ruler_prompts("niah_multikey_1", tokenizer, 1500, samples=2, seed=3)
    assert [p.input_ids for p in a[:2]] == [p.input_ids for p in b]
    c = build_ruler_prompts("niah_multikey_1", tokenizer, 1500, samples=4, seed=4)
    assert all(p.expected != q.expected for p, q in zip(a, c))
    assert len({p.expected for p in a}) == 4
    other = build_ruler_prompts("niah_multikey_1", trained_tokenizer("bpe"), 1500, samples=4, seed=3)
    assert [p.expected for p in other] == [p.expected for p in a]  # same values whatever the tokenizer


def test_qa_files_of_both_shapes(tmp_path):
    squad = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [
        {"context": f"Paragraph {i}: the river Alpha{i} flows into lake Beta{i}.",
         "qas": [{"question": f"Where does Alpha{i} flow?", "answers": [{"text": f"lake Beta{i}"}], "is_impossible": False},
                 {"question": "Unanswerable?", "answers": [], "is_impossible": True}]} for i in range(30)]}]}
    hotpot = [{"question": f"Who met G{i}?", "answer": f"H{i}",
               "context": [[f"Doc{i}a", [f"G{i} was a painter. ", "He lived long."]], [f"Doc{i}b", [f"H{i} met G{i}."]]]}
              for i in range(30)]
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    (tmp_path / "hotpot.json").write_text(json.dumps(hotpot))
    qa = {"squad": read_qa_file(str(tmp_path / "squad.json")), "hotpotqa": read_qa_file(str(tmp_path / "hotpot.json"))}
    assert len(qa["squad"].items) == 30 and len(qa["hotpotqa"].documents) == 60
    tokenizer = byte_tokenizer()
    for task in ("qa_1", "qa_2"):
        prompts = build_ruler_prompts(task, tokenizer, 1500, samples=3, qa=qa)
        for p in prompts:
            assert p.tokens == 1500 - 32
            text = tokenizer.decode(p.input_ids, skip_special_tokens=True)
            assert text.endswith(" Answer:") and "\n\nDocument 1:\n" in text
            assert p.needles and all(n.text.startswith("Document ") for n in p.needles)
            assert all(a in text for a in p.expected)
        longer = build_ruler_prompts(task, tokenizer, 2500, samples=3, qa=qa)
        assert [p.expected for p in longer] == [p.expected for p in prompts]  # every length asks the same questions
    (tmp_path / "bad.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(CtxextError, match="not a QA file"):
        read_qa_file(str(tmp_path / "bad.json"))


# -- scoring ---------------------------------------------------------------------------------------------


def test_string_match_as_published():
    assert string_match_all("It is 123 and 456.", ["123", "789"]) == 50.0
    assert string_match_all("  ABC\x00def", ["abc", "DEF"]) == 100.0
    assert string_match_part("in Paris, France", ["paris", "Lyon"]) == 100.0
    assert string_match_part("in Rome", ["paris", "Lyon"]) == 0.0
    assert TASKS["qa_1"].metric == "part" and all(TASKS[t].metric == "all" for t in SYNTHETIC)


@pytest.mark.parametrize(
    "scores, threshold, expected",
    [
        ({256: 90.0, 512: 86.0, 1024: 50.0}, 85.6, 512),
        ({256: 90.0, 512: 85.6, 1024: 85.59}, 85.6, 512),  # equal counts, as RULER underlines 85.6
        ({256: 80.0, 512: 95.0}, 85.6, None),  # the shortest fails: below every tested length
        ({256: 99.0, 512: 40.0, 1024: 99.0}, 85.6, 256),  # a dip ends it
        ({256: 99.0, 512: 99.0}, 85.6, 512),
        ({256: 60.0, 512: 55.0}, 50.0, 512),
    ],
)
def test_effective_length_rule(scores, threshold, expected):
    assert effective_length(scores, threshold) == expected


# -- decoding --------------------------------------------------------------------------------------------


def outputs(runner: RulerRunner, prompts) -> dict[tuple, list[int]]:
    return {(p.task, p.length, p.sample): tokens for batch in runner.run(prompts) for p, tokens in batch}


def test_batched_shared_prefix_greedy_equals_per_sample_generate():
    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=7, window=2048)
    prompts = [p for task, n in (("niah_single_1", 700), ("niah_single_2", 900), ("niah_multikey_2", 700), ("fwe", 700))
               for p in build_ruler_prompts(task, tokenizer, n, samples=3, seed=1)]
    decoder = GreedyDecoder(model, tokenizer)
    reference = {(p.task, p.length, p.sample): decoder.generate([p.input_ids], p.max_new_tokens)[0] for p in prompts}
    for options in ({}, {"batch_size": 1}, {"batch_size": 2}, {"share_prefix": False}):
        runner = RulerRunner(model, tokenizer, **options)
        assert outputs(runner, prompts) == reference, options
    runner = RulerRunner(model, tokenizer)
    outputs(runner, prompts)
    naive = sum(p.tokens + len(reference[(p.task, p.length, p.sample)]) for p in prompts)
    assert runner.tokens_run < naive  # the noise and essay prefixes were shared


def test_early_stops_drop_finished_rows_and_still_equal_generate():
    """Rows that end (EOS, a stop token) at different steps leave the batch; the others go on unchanged."""
    tokenizer = byte_tokenizer()
    model = tiny_llama(seed=10, window=2048)  # this one says EOS after a few tokens on some of these prompts
    prompts = [p.input_ids for p in build_ruler_prompts("fwe", tokenizer, 700, samples=6, seed=2)]
    decoder = GreedyDecoder(model, tokenizer)
    reference = [decoder.generate([p], 40)[0] for p in prompts]
    assert len({len(r) for r in reference}) > 1 and min(len(r) for r in reference) < 40  # rows finish at different steps
    assert decoder.greedy(prompts, 40) == reference
    stop = collections.Counter(t for row in reference for t in row).most_common(1)[0][0]
    stopped = decoder.greedy(prompts, 40, stop_ids={stop})
    assert stopped == [decoder.generate([p], 40, {stop})[0] for p in prompts]
    assert all(row[-1] == stop for row in stopped if stop in row) and stopped != reference


def test_length_dependent_rope_gets_no_shared_prefix_and_equals_generate():
    from ctxext.patching.model import patch_model

    tokenizer = byte_tokenizer()
    model = patch_model(tiny_llama(seed=3, window=256), "dynamic-ntk", 4)
    runner = RulerRunner(model, tokenizer)
    assert not runner.share_prefix
    prompts = build_ruler_prompts("niah_single_1", tokenizer, 700, samples=2)
    assert outputs(runner, prompts) == outputs(RulerRunner(model, tokenizer, generate=True), prompts)


# -- the evaluation ----------------------------------------------------------------------------------------


class NeedleOracle(InductionOracle):
    """Answers a needle question when the needle and the question are within its last `window` tokens.

    It reads its visible text, takes the key from "...for KEY mentioned in the provided text is/are"
    and answers " VALUE." then EOS, where "One of the special magic ... for KEY is: VALUE." is visible;
    otherwise it says EOS at once (an empty answer).
    """

    def __init__(self, window: int, tokenizer):
        super().__init__(window)
        self.tokenizer = tokenizer
        self.ids = {c: tokenizer(c, add_special_tokens=False).input_ids[0] for c in string.printable}

    def _predict(self, history: list[int], t: int) -> int:
        text = self.tokenizer.decode(history[max(0, t - self.window + 1) : t + 1], skip_special_tokens=True)
        asked = re.search(r"for (\S+) mentioned in the provided text (?:is|are)(.*)$", text, re.S)
        if asked is None:
            return 0
        key, said = asked.group(1), asked.group(2)
        found = re.search(rf"for {re.escape(key)} is: (\S+)\.", text[: asked.start()])
        answer = f" {found.group(1)}." if found else ""
        return self.ids[answer[len(said)]] if len(said) < len(answer) else self.tokenizer.eos_token_id


def test_an_oracle_solves_the_needle_tasks_inside_its_window_and_not_beyond(tmp_path):
    tokenizer = byte_tokenizer()
    tasks = ["niah_single_1", "niah_single_2", "niah_multikey_2", "niah_multikey_3"]
    wide = ("wide", NeedleOracle(5000, tokenizer), tokenizer)
    narrow = ("narrow", NeedleOracle(700, tokenizer), tokenizer)
    report = evaluate_ruler([wide, narrow], [1200, 2400], tasks=tasks, samples=4, seed=9, output_dir=tmp_path, progress=False)
    for r in report["results"]:
        if r["model"] == "wide":
            assert r["score"] == 100.0 and r["prediction"] == " " + r["expected"][0] + ".", r
        else:
            (needle,) = r["needles"]
            if needle["start"] >= r["tokens"] - 700 + 48:  # needle, question and answer in view
                assert r["score"] == 100.0
            elif needle["end"] <= r["tokens"] - 700:
                assert r["score"] == 0.0 and r["prediction"] == ""
    effective = {e["model"]: e for e in report["effective_length"]}
    assert effective["wide"]["effective_length"] == 2400 and effective["wide"]["shown"] == "2400+"
    assert effective["narrow"]["effective_length"] is None and effective["narrow"]["claimed_window"] == 700
    table = ruler_table(report).splitlines()
    assert table[0].split() == ["model", "1200", "2400", "effective@85.6", "claimed"]
    assert table[2].split() == ["wide", "100.0", "100.0", "2400+", "5000"]


def test_ruler_json_records_scores_files_and_report(tmp_path):
    import matplotlib.image

    tokenizer = byte_tokenizer()
    models = [("a/one", NeedleOracle(1500, tokenizer), tokenizer), ("two", tiny_llama(seed=5, window=1024), tokenizer)]
    report = evaluate_ruler(models, [800, 1200], tasks=["niah_single_1", "niah_multivalue", "fwe"], samples=2, seed=4,
                            output_dir=tmp_path / "out", progress=False)
    data = json.loads((tmp_path / "out" / "ruler.json").read_text())
    assert data == report
    assert set(data) == {"results", "summary", "average", "effective_length", "settings"}
    assert len(data["results"]) == 2 * 3 * 2 * 2
    keys = {"model", "task", "length", "tokens", "max_new_tokens", "sample", "needles", "expected", "prediction", "score"}
    for r in data["results"]:
        assert set(r) == keys and r["tokens"] + r["max_new_tokens"] == r["length"]
        # the score recomputed from the prediction: case-insensitive containment of each expected string
        found = sum(e.lower() in r["prediction"].strip().lower() for e in r["expected"])
        assert r["score"] == 100.0 * found / len(r["expected"])
    for s in data["summary"]:
        cell = [r["score"] for r in data["results"] if (r["model"], r["task"], r["length"]) == (s["model"], s["task"], s["length"])]
        assert s["score"] == round(sum(cell) / len(cell), 2) and s["samples"] == len(cell)
    for a in data["average"]:
        cell = [s["score"] for s in data["summary"] if (s["model"], s["length"]) == (a["model"], a["length"])]
        assert a["score"] == round(sum(cell) / len(cell), 2) and a["tasks"] == 3
    by_sample = collections.defaultdict(set)
    for r in data["results"]:
        by_sample[(r["task"], r["length"], r["sample"])].add(json.dumps(r["expected"]))
    assert all(len(v) == 1 for v in by_sample.values())  # both models were asked the same
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["ruler_average.png", "ruler_heatmap_a_one.png", "ruler_heatmap_two.png"]
    assert matplotlib.image.imread(tmp_path / "out" / "ruler_average.png").shape[2] in (3, 4)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| a/one |" in md and "![average vs length](ruler_average.png)" in md and "| niah_multivalue |" in md


class Interrupted(Exception):
    pass


class FailingOracle(NeedleOracle):
    def __init__(self, window, tokenizer, fail_at):
        super().__init__(window, tokenizer)
        self.fail_at = fail_at

    def forward(self, *args, **kwargs):
        if self.calls + 1 == self.fail_at:
            raise Interrupted
        return super().forward(*args, **kwargs)


def test_an_interrupted_run_keeps_its_results_and_resume_finishes_it(tmp_path):
    tokenizer = byte_tokenizer()
    out = tmp_path / "run"
    args = dict(lengths=[800, 1000], tasks=["niah_multikey_2"], samples=2, seed=5, output_dir=out, progress=False)
    # no shared prefix for a needle haystack: one prompt pass and ~10 decoding steps per batch; break in the 2nd
    with pytest.raises(Interrupted):
        evaluate_ruler([("m", FailingOracle(2000, tokenizer, fail_at=15), tokenizer)], **args)
    kept = json.loads((out / "ruler.json").read_text())["results"]
    assert len(kept) == 2 and not (out / "report.md").exists()
    with pytest.raises(CtxextError, match="already exists; pass --resume"):
        evaluate_ruler([("m", NeedleOracle(2000, tokenizer), tokenizer)], **args)
    with pytest.raises(CtxextError, match="another seed"):
        evaluate_ruler([("m", NeedleOracle(2000, tokenizer), tokenizer)], **{**args, "seed": 6}, resume=True)
    oracle = NeedleOracle(2000, tokenizer)
    report = evaluate_ruler([("m", oracle, tokenizer)], **args, resume=True)
    assert report["results"][:2] == kept and len(report["results"]) == 4
    assert {(r["length"], r["sample"]) for r in report["results"]} == {(800, 0), (800, 1), (1000, 0), (1000, 1)}
    fresh = evaluate_ruler([("m", NeedleOracle(2000, tokenizer), tokenizer)], **{**args, "output_dir": tmp_path / "fresh"})
    assert report["summary"] == fresh["summary"] and (out / "report.md").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tasks=["niah_single_9"]), "Unknown RULER task 'niah_single_9'"),
        (dict(lengths=[150]), "too short for RULER's niah_single_1"),
        (dict(tasks=["vt"], lengths=[900]), "too short for RULER's vt"),
        (dict(tasks=["qa_1"]), "pass one with --qa-file"),
        (dict(qa_files=["{tmp}/bad.json"]), "is not a QA file"),
        (dict(qa_files=["{tmp}/missing.json"]), "QA file .* not found"),
        (dict(haystack="{tmp}/short.txt", tasks=["niah_single_2"]), "needs at least 20"),
        (dict(samples=0), "samples"),
        (dict(threshold=120), "percentage"),
        (dict(lengths=[0]), "greater than 0"),
    ],
)
def test_bad_input_raises_one_sentence_and_creates_nothing(tmp_path, kwargs, message):
    (tmp_path / "bad.json").write_text('[{"q": 1}]')
    (tmp_path / "short.txt").write_text("One sentence. Two sentences.")
    kwargs = {k: ([x.format(tmp=tmp_path) for x in v] if k == "qa_files" else v.format(tmp=tmp_path) if isinstance(v, str) else v)
              for k, v in kwargs.items()}
    args = dict(lengths=[700], tasks=["niah_single_1"], samples=1, output_dir=tmp_path / "out" / "deeper", progress=False)
    with pytest.raises(CtxextError, match=message) as err:
        evaluate_ruler([("m", InductionOracle(100), byte_tokenizer())], **{**args, **kwargs})
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_report_md_it_did_not_write_is_left_alone(tmp_path):
    (tmp_path / "report.md").write_text("someone else's")
    with pytest.raises(CtxextError, match="did not write"):
        evaluate_ruler([("m", InductionOracle(100), byte_tokenizer())], [700], tasks=["niah_single_1"], samples=1,
                       output_dir=tmp_path, progress=False)
    assert (tmp_path / "report.md").read_text() == "someone else's" and not (tmp_path / "ruler.json").exists()
