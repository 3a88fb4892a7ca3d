"""Options generated from the library's typed settings: defaults, types and choices cannot drift."""

import argparse
import dataclasses
import inspect

import pytest

from ctxext.cli.app import build_parser
from ctxext.cli.options import add_options, dataclass_options, option_values
from ctxext.evaluation.passkey import evaluate_passkey
from ctxext.evaluation.perplexity import evaluate_perplexity
from ctxext.loading import DTYPES
from ctxext.training.recipe import LORA_TARGETS, RECIPE_FIELDS, SCHEDULES, Recipe, option

TRAIN = ["train", "m/x", "--method", "yarn", "--factor", "4", "--dataset", "d.txt", "--output", "out"]


def subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def choices_of(parser: argparse.ArgumentParser, dest: str):
    return next(a.choices for a in parser._actions if a.dest == dest)


def test_train_defaults_are_the_recipes_and_every_field_has_an_option():
    args = build_parser().parse_args(TRAIN)
    assert Recipe(**{name: getattr(args, name) for name in RECIPE_FIELDS}) == Recipe()
    help_text = subparser("train").format_help()
    for field in dataclasses.fields(Recipe):
        flag = "--" + field.name.replace("_", "-")
        assert flag in help_text, flag
        assert field.metadata["help"].split()[0] in help_text, field.name
    assert "(default: 400)" in help_text and "(default: 2e-05)" in help_text and "(default: constant)" in help_text


def test_train_choices_are_the_librarys_constants():
    train = subparser("train")
    assert tuple(choices_of(train, "schedule")) == SCHEDULES
    assert tuple(choices_of(train, "lora_target")) == LORA_TARGETS
    assert tuple(choices_of(train, "dtype")) == DTYPES


def test_train_values_reach_the_recipe_with_their_types():
    args = build_parser().parse_args(TRAIN + ["--max-steps", "7", "--learning-rate", "1e-3", "--pose", "--seq-len", "512",
                                              "--no-gradient-checkpointing", "--lora-target", "all-linear"])
    recipe = Recipe(**{name: getattr(args, name) for name in RECIPE_FIELDS})
    assert recipe == Recipe(max_steps=7, learning_rate=1e-3, pose=True, seq_len=512, gradient_checkpointing=False,
                            lora_target="all-linear")
    assert isinstance(recipe.max_steps, int) and isinstance(recipe.learning_rate, float)


def test_a_changed_default_changes_the_command_line():
    """The parser reads the dataclass, not a copy: a settings class with other defaults gives other options."""

    @dataclasses.dataclass(frozen=True)
    class Settings:
        steps: int = option(3, "steps", "g", minimum=1)
        rate: float = option(0.5, "rate", "g", above=0)
        mode: str = option("b", "mode", "g", choices=("a", "b"))
        fast: bool = option(True, "go fast", "h")

    parser = argparse.ArgumentParser()
    options = dataclass_options(Settings)
    groups = add_options(parser, options)
    assert set(groups) == {"g", "h"}
    assert option_values(parser.parse_args([]), options) == {"steps": 3, "rate": 0.5, "mode": "b", "fast": True}
    assert option_values(parser.parse_args(["--steps", "9", "--mode", "a", "--no-fast"]), options) == {
        "steps": 9, "rate": 0.5, "mode": "a", "fast": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--steps", "0"])  # minimum 1: argparse's positive whole number


@pytest.mark.parametrize("command,function", [("passkey", evaluate_passkey), ("perplexity", evaluate_perplexity)])
def test_eval_defaults_are_the_functions_own(command, function):
    argv = ["eval", command, "m/x", "--lengths", "64", "--output", "out"] + (["--dataset", "d"] if command == "perplexity" else [])
    args = build_parser().parse_args(argv)
    parameters = inspect.signature(function).parameters
    assert args.options, "no generated options"
    for option in args.options:
        assert getattr(args, option.name) == parameters[option.name].default, option.name
    assert tuple(choices_of(subparser("eval", command), "dtype")) == DTYPES


def test_a_command_leaves_warnings_and_progress_bars_as_it_found_them(tmp_path, capsys):
    """--quiet and the one-line warnings hold while the command runs; the caller's settings come back."""
    import warnings

    import datasets
    from transformers.utils import logging

    from ctxext.cli import main
    from evalkit import save_checkpoint

    path = save_checkpoint(tmp_path / "base", window=256)
    show = warnings.showwarning
    filters = list(warnings.filters)
    logging.enable_progress_bar()
    datasets.enable_progress_bars()
    try:
        code = main(["eval", "passkey", str(path), "--lengths", "260", "--depths", "0", "--trials", "1",
                     "--output", str(tmp_path / "eval"), "--quiet"])
        assert code == 0
        assert "warning: " in capsys.readouterr().err  # shown the CLI's way while it ran
        assert warnings.showwarning is show and warnings.filters == filters
        assert logging.is_progress_bar_enabled() and not datasets.are_progress_bars_disabled()
    finally:
        logging.disable_progress_bar()  # as tests/conftest.py leaves it


def test_datasets_progress_bars_are_restored_either_way():
    import datasets

    from ctxext.data import datasets_progress_bars

    for start in (True, False):
        (datasets.enable_progress_bars if start else datasets.disable_progress_bars)()
        with datasets_progress_bars(not start):
            assert datasets.are_progress_bars_disabled() == start
        assert datasets.are_progress_bars_disabled() == (not start)
    datasets.enable_progress_bars()


def test_ctxext_info_plots_without_pyplot(tmp_path):
    """The picture is a Figure of its own: pyplot (and its global state, backend and figure list) is never loaded."""
    import subprocess
    import sys

    from checkpoints import save_checkpoint

    src = save_checkpoint(tmp_path / "llama", "llama")
    code = (
        "import sys; from ctxext.cli import main; "
        f"assert main(['info', {str(src)!r}, '--method', 'yarn', '--factor', '4', '--plot', {str(tmp_path / 'd.png')!r}]) == 0; "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False" and (tmp_path / "d.png").is_file()
