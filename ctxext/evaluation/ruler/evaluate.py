"""`evaluate_ruler`: RULER's tasks for several models at several lengths, the scores and the effective length.

    report = evaluate_ruler(["base/", ("yarn-x4", model, tokenizer)], [4096, 8192, 16384],
                            tasks=["niah_single_1", "vt"], samples=20, output_dir="eval/")
    report["average"]            # [{"model": "base", "length": 4096, "score": 93.5, "tasks": 2}, ...]
    report["effective_length"]   # [{"model": "base", "effective_length": 8192, "claimed_window": 16384}, ...]

Decoding is greedy with a KV cache (evaluation/decoding.py): the samples of one (task, length) run as a
batch (all have the same length, so no padding), the text every sample of a task shares (the
template and the start of a noise or essay haystack, up to the first needle) is computed once per
task and model, and each row stops at end-of-sequence (or, with `stop_at_newline`, after a line
break) or after the task's generation budget. `generate=True` runs `model.generate` instead (the
same records; the tests compare them).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Iterator, Sequence

from ...errors import CtxextError
from ...io import one_writer
from ..common import (
    ModelEntry,
    ModelSpec,
    ResultsFile,
    check_device,
    format_table,
    iterate_models,
    model_window,
    parse_lengths,
    resolve_models,
    slug,
    warn_beyond_window,
)
from ..decoding import DEFAULT_BATCH_TOKENS, GreedyDecoder, newline_ids
from .haystack import essay_sentences
from .qa import QASet, read_qa_file
from .scoring import DEFAULT_THRESHOLD, average, describe, effective_lengths, score, summarize
from .tasks import TASKS, RulerPrompt, RulerPromptBuilder, check_tasks

DEFAULT_SAMPLES = 20
RESULTS_FILE = "ruler.json"


class RulerRunner:
    """Greedy answers of one model to many RULER prompts, batched per (task, length), prefixes shared.

        runner = RulerRunner(model, tokenizer)
        for batch in runner.run(prompts):       # in (task, length, sample) order
            for prompt, tokens in batch: ...    # tokens: greedy decoding's, EOS left out
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        share_prefix: bool = True,
        generate: bool = False,
        stop_at_newline: bool = False,
    ):
        self.decoder = GreedyDecoder(model, tokenizer)
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.share_prefix = share_prefix and self.decoder.share_prefix
        self.generate = generate
        self.stop_ids = newline_ids(tokenizer) if stop_at_newline else set()

    @property
    def tokens_run(self) -> int:
        return self.decoder.tokens_run

    def _batches(self, prompts: Sequence[RulerPrompt]) -> Iterator[list[RulerPrompt]]:
        group: list[RulerPrompt] = []
        for prompt in prompts:
            size = self.batch_size or max(1, self.batch_tokens // prompt.length)
            if group and ((group[0].task, group[0].length) != (prompt.task, prompt.length) or len(group) >= size):
                yield group
                group = []
            group.append(prompt)
        if group:
            yield group

    def run(self, prompts: Sequence[RulerPrompt]) -> Iterator[list[tuple[RulerPrompt, list[int]]]]:
        order = sorted(prompts, key=lambda p: (list(TASKS).index(p.task), p.length, p.sample))
        for task in dict.fromkeys(p.task for p in order):
            mine = [p for p in order if p.task == task]
            prefix, prefix_ids = None, ()
            if self.share_prefix and not self.generate:
                # the longest text some sample shares with every other of the task: up to its first needle
                prefix_ids = max((p.input_ids[: p.shared] for p in mine), key=len)
                prefix = self.decoder.prefill(prefix_ids) if len(prefix_ids) > 1 else None
            for group in self._batches(mine):
                ids = [p.input_ids for p in group]
                budget = group[0].max_new_tokens
                if self.generate:
                    tokens = self.decoder.generate(ids, budget, self.stop_ids)
                else:
                    tokens = self.decoder.greedy(ids, budget, prefix=prefix, prefix_ids=prefix_ids, stop_ids=self.stop_ids)
                yield list(zip(group, tokens))


def read_qa_files(paths: Sequence[str] | str | None) -> dict[str, QASet]:
    """{"squad": ..., "hotpotqa": ...} from the user's files (at most one of each shape)."""
    if paths is None:
        return {}
    if isinstance(paths, (str, Path)):
        paths = [paths]
    qa: dict[str, QASet] = {}
    for path in paths:
        data = read_qa_file(str(path))
        if data.kind in qa:
            raise CtxextError(f"{qa[data.kind].path} and {path} are both {data.kind}-shaped; give one QA file of each shape.")
        qa[data.kind] = data
    return qa


def _check_number(name: str, value: Any, low: float, whole: bool = True) -> None:
    kind = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < low:
        what = "a whole number" if whole else "a number"
        raise CtxextError(f"{name} must be {what} of at least {low}, got {value!r}.")


def _claimed_window(entry: ModelEntry) -> int | None:
    """The window the model's config claims (its RoPE scaling counted), without loading its weights."""
    if entry.model is not None:
        return model_window(entry.model)
    from transformers import AutoConfig

    try:
        return model_window(types.SimpleNamespace(config=AutoConfig.from_pretrained(entry.source)))
    except (OSError, ValueError):
        return None


def build_report(results: list[dict], windows: dict[str, int | None], threshold: float, settings: dict) -> dict:
    """ruler.json's content: the records, their summary per task x length, the average per length and
    the effective length per model."""
    summary = summarize(results)
    averages = average(summary)
    lengths = sorted({r["length"] for r in results})
    effective = effective_lengths(averages, threshold)
    return {
        "results": results,
        "summary": summary,
        "average": averages,
        "effective_length": [
            {"model": m, "effective_length": effective[m], "shown": describe(effective[m], lengths),
             "claimed_window": windows.get(m), "threshold": threshold}
            for m in effective
        ],
        "settings": settings,
    }


@one_writer("output_dir")  # one run at a time writes an output directory
def evaluate_ruler(
    models: ModelSpec | Sequence[ModelSpec],
    lengths: Sequence[int],
    *,
    tasks: Sequence[str] | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    haystack: str | None = None,
    qa_files: Sequence[str] | str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    generate: bool = False,
    stop_at_newline: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """RULER scores of each model at each length; returns ruler.json's content (see build_report).

    `models`: directories or hub ids (each loaded, evaluated and freed in turn, on `device` in `dtype`)
    and/or (name, model, tokenizer) triples in memory. `tasks`: RULER task names (default: the 11 that
    need no file, plus qa_1 / qa_2 when `qa_files` holds a SQuAD- / HotpotQA-shaped file). `samples`
    per task and length; `haystack`: a text file for the essay haystack. With `output_dir`, writes
    ruler.json after every batch and, at the end, the heatmaps, the average plot and report.md;
    `resume=True` continues from ruler.json. Bad input raises CtxextError before any model is loaded.
    """
    from tqdm.auto import tqdm

    lengths = parse_lengths(lengths)
    _check_number("samples", samples, 1)
    _check_number("seed", seed, 0)
    _check_number("threshold", threshold, 0, whole=False)
    if threshold > 100:
        raise CtxextError(f"threshold is a percentage from 0 to 100, got {threshold!r}.")
    if batch_size is not None:
        _check_number("batch_size", batch_size, 1)
    qa = read_qa_files(qa_files)
    tasks = check_tasks(tasks, qa)
    if haystack is not None:
        essay_sentences(str(haystack))  # a missing or too short file fails here
    entries = resolve_models(models)
    check_device(device, dtype)
    out = ResultsFile(output_dir, RESULTS_FILE, resume=resume, overwrite=overwrite,
                      sources=[*(e.source for e in entries), haystack, *(d.path for d in qa.values())])
    if out.path is not None and (out.path.parent / "report.md").exists() and not out.path.exists():
        raise CtxextError(f"{out.path.parent} holds a report.md that ctxext eval ruler did not write; choose another --output.")

    # every prompt, per tokenizer, before any model loads (a length a task cannot fill fails here)
    prompts: dict[str, list[RulerPrompt]] = {}
    built: dict[int, list[RulerPrompt]] = {}
    for entry in entries:
        tokenizer = entry.load_tokenizer()
        if id(tokenizer) not in built:
            builder = RulerPromptBuilder(tokenizer, haystack=None if haystack is None else str(haystack), qa=qa)
            built[id(tokenizer)] = [builder.build(t, n, s, seed) for t in tasks for n in lengths for s in range(samples)]
        prompts[entry.name] = built[id(tokenizer)]

    # a resumed run keeps what it finished; its samples must be the ones this run would build
    wanted = {(e.name, p.task, p.length, p.sample): p for e in entries for p in prompts[e.name]}
    done = set()
    for record in out.results:
        key = (record.get("model"), record.get("task"), record.get("length"), record.get("sample"))
        if key in wanted:
            if list(record.get("expected", ())) != list(wanted[key].expected):
                raise CtxextError(
                    f"{out.path} was written with another seed, haystack or QA file; resume with the same "
                    "--seed, --haystack and --qa-file, or pass --overwrite to start again."
                )
            done.add(key)

    settings = {"tasks": tasks, "lengths": lengths, "samples": samples, "seed": seed, "threshold": threshold,
                "haystack": None if haystack is None else str(haystack), "qa_files": sorted(d.path for d in qa.values()),
                "stop_at_newline": stop_at_newline}
    windows = {e.name: _claimed_window(e) for e in entries}
    results = out.results
    todo = {e.name: [p for p in prompts[e.name] if (e.name, p.task, p.length, p.sample) not in done] for e in entries}
    bar = tqdm(total=sum(len(t) for t in todo.values()), unit="sample", desc="ruler", disable=not progress,
               delay=0.5)  # a model that fails to load leaves no bar above the error
    try:
        for entry, model, tokenizer in iterate_models([e for e in entries if todo[e.name]], device=device, dtype=dtype):
            warn_beyond_window(entry.name, model, sorted({p.length for p in todo[entry.name]}))
            runner = RulerRunner(model, tokenizer, batch_size=batch_size, generate=generate, stop_at_newline=stop_at_newline)
            for batch in runner.run(todo[entry.name]):
                bar.set_postfix_str(f"{entry.name} {batch[0][0].task} {batch[0][0].length}")
                for prompt, tokens in batch:
                    prediction = tokenizer.decode(tokens, skip_special_tokens=True)
                    results.append(make_record(entry.name, prompt, prediction))
                out.write(build_report(results, windows, threshold, settings))
                bar.update(len(batch))
    finally:
        bar.close()
    report = build_report(results, windows, threshold, settings)
    out.write(report)
    if out.path is not None:
        write_ruler_files(report, out.path.parent)
    return report


def make_record(model: str, prompt: RulerPrompt, prediction: str) -> dict:
    """One sample of ruler.json: what was asked, where the needles were, what came back, its score."""
    return {
        "model": model,
        "task": prompt.task,
        "length": prompt.length,
        "tokens": prompt.tokens,
        "max_new_tokens": prompt.max_new_tokens,
        "sample": prompt.sample,
        "needles": [{"text": n.text, "start": n.start, "end": n.end, "depth": n.depth} for n in prompt.needles],
        "expected": list(prompt.expected),
        "prediction": prediction,
        "score": score(TASKS[prompt.task].metric, prediction, prompt.expected),
    }


# -- output -------------------------------------------------------------------------------------------


def ruler_table(report: dict) -> str:
    """Average score per model (rows) and length (columns), then the effective and the claimed length."""
    effective = {r["model"]: r["shown"] for r in report["effective_length"]}
    windows = {r["model"]: str(r["claimed_window"]) if r["claimed_window"] else "-" for r in report["effective_length"]}
    threshold = report["effective_length"][0]["threshold"] if report["effective_length"] else DEFAULT_THRESHOLD
    return format_table(report["average"], "score", lambda v: f"{v:.1f}",
                        extra=[(f"effective@{threshold:g}", effective), ("claimed", windows)])


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def render_report(report: dict, pictures: dict[str | None, str]) -> str:
    """report.md: the headline table, each model's task x length table, the pictures, how to read them."""
    settings = report["settings"]
    lengths = sorted({r["length"] for r in report["average"]})
    models = [r["model"] for r in report["effective_length"]]
    avg = {(r["model"], r["length"]): r["score"] for r in report["average"]}
    eff = {r["model"]: r for r in report["effective_length"]}
    head = _markdown(
        ["model", *map(str, lengths), f"effective length (>= {settings['threshold']:g})", "claimed window"],
        [[m, *(f"{avg[(m, n)]:.1f}" if (m, n) in avg else "-" for n in lengths), eff[m]["shown"],
          str(eff[m]["claimed_window"] or "-")] for m in models],
    )
    parts = [
        "# RULER",
        f"Tasks: {', '.join(settings['tasks'])}; {settings['samples']} samples per task and length, seed "
        f"{settings['seed']}. Each score is RULER's string match in percent (all-of for the needle, "
        "variable-tracking and word-extraction tasks, any-of for QA), averaged over samples, then over "
        "tasks for each length. A length counts the prompt and the task's generation budget, as RULER's do.",
        "## Average and effective length",
        head,
        f"The effective length is the longest tested length at which the average, and the average at "
        f"every shorter tested length, is at least {settings['threshold']:g}; `N+` means every tested "
        "length passed, `<N` that the shortest did not.",
    ]
    if None in pictures:
        parts.append(f"![average vs length]({pictures[None]})")
    summary = {(s["model"], s["task"], s["length"]): s["score"] for s in report["summary"]}
    for m in models:
        parts.append(f"## {m}")
        parts.append(_markdown(["task", *map(str, lengths)],
                               [[t, *(f"{summary[(m, t, n)]:.1f}" if (m, t, n) in summary else "-" for n in lengths)]
                                for t in settings["tasks"]]))
        if m in pictures:
            parts.append(f"![{m}]({pictures[m]})")
    parts.append(f"Haystack: {settings['haystack'] or 'the shipped essay (Alice in Wonderland)'}"
                 + (f"; QA files: {', '.join(settings['qa_files'])}" if settings["qa_files"] else "") + ".")
    return "\n\n".join(parts) + "\n"


def write_ruler_files(report: dict, directory: str | Path) -> list[Path]:
    """ruler_heatmap_<model>.png per model, ruler_average.png and report.md; returns the paths written."""
    from ...io import atomic_write_text
    from .. import plots

    directory = Path(directory)
    paths, pictures, used = [], {}, set()  # pictures: model name (or None for the average) -> file name
    effective = {r["model"]: r["effective_length"] for r in report["effective_length"]}
    for model in effective:
        name = slug(model)
        while name in used:
            name += "_"
        used.add(name)
        path = plots.ruler_heatmap(report["summary"], report["average"], model, directory / f"ruler_heatmap_{name}.png")
        paths.append(path)
        pictures[model] = path.name
    if report["average"]:
        threshold = report["settings"]["threshold"]
        paths.append(plots.ruler_average_vs_length(report["average"], effective, threshold, directory / "ruler_average.png"))
        pictures[None] = "ruler_average.png"
    paths.append(atomic_write_text(directory / "report.md", render_report(report, pictures)))
    return paths
