"""A run's state on disk, until its output is complete: run.json, checkpoints and the step log.

    OUTPUT.checkpoints/
        run.json              what the run is (model, patch, data, recipe): a resume must repeat it
        step-0000050/         accelerate's state (trainable weights, optimizer, RNG), trainer_state.json last
        train_log.jsonl       one record per optimizer step

Sample k of a run is fixed by (seed, k), so a resumed run that reloads the last checkpoint and skips
the batches before it sees exactly the samples an uninterrupted run would; the log keeps only the
steps up to that checkpoint, so no step is recorded twice.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .._compat import state_weights_name
from ..errors import CtxextError
from ..io import atomic_write_json, atomic_write_text, mark

LOG_NAME = "train_log.jsonl"
#: the folder the tracker of --report-to logs into (in the run directory, then in the output)
TRACKER_LOGS = "logs"
RUN_NAME = "run.json"
#: recipe fields a resumed run may change: they do not touch the data order or the weights
RESUMABLE_CHANGES = ("save_every", "report_to")


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """Where a run keeps its checkpoints and log until the output is complete: `OUTPUT.checkpoints`."""
    output = Path(output_dir).expanduser()
    return output.with_name(output.name + ".checkpoints")


def refuse_leftovers(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """An interrupted run's checkpoints are neither reused nor discarded unless the caller says so."""
    if run_dir.exists() and not (resume or overwrite):
        raise CtxextError(
            f"{run_dir} holds the checkpoints of an interrupted run; pass --resume to continue it "
            "or --overwrite to start over."
        )


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint of a run: its directory and the optimizer step it was saved after."""

    path: Path
    step: int


def checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints (their trainer_state.json is written last), oldest first."""
    found = []
    for path in run_dir.glob("step-*"):
        try:
            found.append(Checkpoint(path, int(json.loads((path / "trainer_state.json").read_text())["step"])))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found, key=lambda c: c.step)


def resume_point(run_dir: Path, run: dict, resume: bool, say: Callable[[str], None]) -> Checkpoint | None:
    """The checkpoint to continue from, after checking that this run repeats the interrupted one."""
    if not resume:
        return None
    if not run_dir.exists():
        say(f"ctxext train: nothing to resume in {run_dir}; starting from step 0.")
        return None
    try:
        previous = json.loads((run_dir / RUN_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CtxextError(f"{run_dir} has no readable run.json to resume from; pass --overwrite to start over.") from None
    current = json.loads(json.dumps(run))  # compare in JSON's types
    changed = sorted(
        k for k in current.keys() | previous.keys()
        if k not in (*RESUMABLE_CHANGES, "ctxext") and current.get(k) != previous.get(k)
    )  # fmt: skip
    if changed:
        what = ", ".join(f"{k} ({previous.get(k)!r} then, {current.get(k)!r} now)" for k in changed)
        raise CtxextError(
            f"--resume must repeat the interrupted run's settings, but {what} changed; "
            "repeat them, or pass --overwrite to start over."
        )
    found = checkpoints(run_dir)
    if not found:
        say(f"ctxext train: {run_dir} holds no complete checkpoint yet; starting from step 0.")
        return None
    say(f"ctxext train: resuming from {found[-1].path} (step {found[-1].step}).")
    return found[-1]


def start_run_dir(accelerator: Any, run_dir: Path, run: dict, start: Checkpoint | None) -> None:
    """Create (or, starting over, empty) the run directory and record the run in it; all processes wait."""
    if accelerator.is_main_process:
        if start is None and run_dir.exists():
            shutil.rmtree(run_dir)  # --overwrite: start over
        run_dir.mkdir(parents=True, exist_ok=True)
        mark(run_dir, "run")  # ctxext's own, so a later --overwrite may remove it
        atomic_write_json(run_dir / RUN_NAME, run)
    accelerator.wait_for_everyone()


def restore(accelerator: Any, run_dir: Path, start: Checkpoint | None, loader: Any, micro_steps: int) -> tuple[list[dict], Any, int]:
    """(log so far, loader positioned after it, first step) to continue from `start` (or from step 0).

    Loads accelerate's state (weights, optimizer, RNG), skips the `micro_steps` per optimizer step
    already trained, and rewrites the log with only the steps up to the checkpoint.
    """
    log = read_log(run_dir, upto=0 if start is None else start.step)
    first_step = 0
    if start is not None:
        accelerator.load_state(str(start.path))
        first_step = start.step
        loader = accelerator.skip_first_batches(loader, first_step * micro_steps)
    if accelerator.is_main_process:
        atomic_write_text(run_dir / LOG_NAME, "".join(json.dumps(r) + "\n" for r in log))
    return log, loader, first_step


def read_log(run_dir: Path, upto: int) -> list[dict]:
    """The log records of steps 1..upto (later ones belong to steps a resumed run repeats).

    A torn last line (a power cut mid-write) is dropped: its step is past the last checkpoint, so the
    resumed run repeats it. Damage anywhere else, or a step missing, is refused.
    """
    path = run_dir / LOG_NAME
    if upto == 0 or not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            record["step"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break  # torn by the interruption: written after the checkpoint we resume from
            raise CtxextError(f"Line {number} of {path} is damaged; pass --overwrite to start over.") from None
        records.append(record)
    kept = [r for r in records if r["step"] <= upto]
    if [r["step"] for r in kept] != list(range(1, upto + 1)):
        raise CtxextError(f"{path} does not record steps 1 to {upto} of the checkpoint; pass --overwrite to start over.")
    return kept


def append_log(run_dir: Path, record: dict) -> None:
    """One step's record at the end of train_log.jsonl (main process only)."""
    with open(run_dir / LOG_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def save_checkpoint(accelerator: Any, run_dir: Path, step: int) -> None:
    """accelerate's state (trainable weights, optimizer, RNG, step) in run_dir/step-N, atomically."""
    final = run_dir / f"step-{step:07d}"
    partial = run_dir / f".step-{step:07d}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(partial / "trainer_state.json", {"step": step})
        os.replace(partial, final)
        for old in checkpoints(run_dir)[:-1]:
            shutil.rmtree(old.path, ignore_errors=True)
    accelerator.wait_for_everyone()


def register_trainable_checkpointing(accelerator: Any) -> None:
    """Checkpoints hold the trainable weights only (LoRA, plus embeddings and norms if trained), not
    a copy of the frozen base model. FSDP and DeepSpeed save their own sharded states instead."""
    from safetensors.torch import load_file

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if len(weights) != len(models):
            return
        for i, model in enumerate(models):
            weights[i] = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def load_hook(models: list, input_dir: str) -> None:
        for i, model in enumerate(models):
            state = load_file(os.path.join(input_dir, state_weights_name(i)))
            expected = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(state) != expected:
                raise CtxextError(
                    f"The checkpoint in {input_dir} does not hold this run's trainable weights; "
                    "pass --overwrite to start over."
                )
            model.load_state_dict(state, strict=False)
        models.clear()  # loaded here; accelerate skips them

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
