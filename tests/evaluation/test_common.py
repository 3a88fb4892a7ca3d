"""What every evaluation shares: the models of a call, their windows, lengths, the results file, the table."""

import gc
import json
import warnings
import weakref

import pytest
import torch

import ctxext
from ctxext.errors import CtxextError
from ctxext.evaluation.common import (
    LengthBeyondWindowWarning,
    ResultsFile,
    format_table,
    iterate_models,
    model_window,
    parse_lengths,
    resolve_models,
    slug,
    warn_beyond_window,
)
from evalkit import byte_tokenizer, save_checkpoint, tiny_llama


def test_models_are_sources_or_triples_with_unique_names(tmp_path):
    path = save_checkpoint(tmp_path / "base")
    model, tokenizer = tiny_llama(), byte_tokenizer()
    entries = resolve_models([f"{path}/", ("mine", model, tokenizer), "org/name"])
    assert [(e.name, e.source, e.model is model) for e in entries] == [
        (str(path), str(path), False), ("mine", None, True), ("org/name", "org/name", False)]
    assert [e.name for e in resolve_models(str(path))] == [str(path)]  # one model alone
    for bad, message in [
        ([str(path), str(path)], "is given twice"),
        ([], "No model to evaluate"),
        ([("m", "not a model", tokenizer)], "Cannot evaluate"),
        ([("m", model, None)], "with a callable model and its tokenizer"),
        ([42], "Cannot evaluate int"),
        ([str(tmp_path / "missing")], "not found"),
    ]:
        with pytest.raises(CtxextError, match=message):
            resolve_models(bad)


def test_models_load_in_turn_and_each_is_freed_before_the_next(tmp_path):
    first, second = save_checkpoint(tmp_path / "a", seed=1), save_checkpoint(tmp_path / "b", seed=2)
    kept = tiny_llama()
    entries = resolve_models([str(first), ("kept", kept, byte_tokenizer()), str(second)])
    seen, alive = [], []
    for entry, model, tokenizer in iterate_models(entries, device="cpu", dtype="float32"):
        for ref in alive:
            assert ref() is None, "the previous model was not freed"
        seen.append((entry.name, model is kept, next(model.parameters()).dtype, model.training))
        if model is not kept:
            alive = [weakref.ref(model)]
        del model
        gc.collect()
    assert seen == [(str(first), False, torch.float32, False), ("kept", True, torch.float32, False),
                    (str(second), False, torch.float32, False)]
    assert entries[0].tokenizer is not None  # the tokenizer stays for the results


def test_the_window_counts_the_scaling_and_past_it_a_warning_names_the_lengths():
    model = tiny_llama(window=64)
    assert model_window(model) == 64
    ctxext.patch_model(model, "yarn", 4)
    assert model_window(model) == 256
    from transformers import GPT2Config

    class NoRope:
        config = GPT2Config(n_positions=128)

    assert model_window(NoRope()) == 128  # not RoPE: its plain window
    assert model_window(object()) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_beyond_window("m", model, [128, 256])
        assert caught == []
        warn_beyond_window("m", model, [128, 300, 512])
    (warning,) = caught
    assert warning.category is LengthBeyondWindowWarning
    assert str(warning.message) == "m has a 256-token window; lengths 300, 512 are beyond it and evaluated anyway."


def test_lengths_are_sorted_distinct_positive_whole_numbers():
    assert parse_lengths([2048, 512, 2048, 1024]) == [512, 1024, 2048]
    assert parse_lengths(64) == [64]
    for bad in ([0], [-5], [1.5], [True], ["64"], []):
        with pytest.raises(CtxextError):
            parse_lengths(bad)


def test_the_results_file_appears_with_the_first_write_and_resumes(tmp_path):
    out = tmp_path / "deep" / "eval"
    results = ResultsFile(out, "scores.json", resume=False, overwrite=False)
    assert results.results == [] and not (tmp_path / "deep").exists()  # nothing written before a batch is done
    results.write({"results": [{"model": "m", "length": 8}]})
    assert json.loads((out / "scores.json").read_text()) == {"results": [{"model": "m", "length": 8}]}
    assert sorted(p.name for p in out.iterdir()) == [".ctxext", "scores.json"]  # ctxext's marker; no temporary file
    with pytest.raises(CtxextError, match="already exists; pass --resume"):
        ResultsFile(out, "scores.json", resume=False, overwrite=False)
    assert ResultsFile(out, "scores.json", resume=True, overwrite=False).results == [{"model": "m", "length": 8}]
    assert ResultsFile(out, "scores.json", resume=False, overwrite=True).results == []
    (out / "scores.json").write_text("{not json")
    with pytest.raises(CtxextError, match="not a results file written by ctxext"):
        ResultsFile(out, "scores.json", resume=True, overwrite=False)
    in_memory = ResultsFile(None, "scores.json", resume=False, overwrite=False)
    in_memory.write({"results": []})  # no directory: nothing written
    with pytest.raises(CtxextError, match="resume needs an output directory"):
        ResultsFile(None, "scores.json", resume=True, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CtxextError, match="is not a directory"):
        ResultsFile(tmp_path / "file", "scores.json", resume=False, overwrite=False)


def test_table_and_slug():
    rows = [{"model": "base", "length": 512, "v": 1.0}, {"model": "base", "length": 256, "v": 0.5},
            {"model": "yarn-x8", "length": 256, "v": 0.25}]
    table = format_table(rows, "v", lambda v: f"{v:.2f}", column=lambda n: f"{n}t")
    assert table.splitlines() == [
        "model    256t  512t",
        "-------  ----  ----",
        "base     0.50  1.00",
        "yarn-x8  0.25     -",
    ]
    assert slug("org/model-7b") == "org_model-7b" and slug("../..") == "model" and slug("a b+c") == "a_b_c"


def test_a_model_on_another_device_or_dtype_is_refused_before_loading():
    from ctxext.evaluation.common import check_device

    check_device("cpu", "float32")
    with pytest.raises(CtxextError, match="Unknown dtype"):
        check_device("cpu", "int8")
    if not torch.cuda.is_available():
        with pytest.raises(CtxextError, match="no CUDA device is available"):
            check_device("cuda", None)
