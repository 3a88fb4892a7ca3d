"""Fine-tune a RoPE-patched causal LM for its longer window with LoRA: patch, train, merge, save.

    from ctxext import finetune
    result = finetune("meta-llama/Llama-2-7b-hf", "yarn", 16, "emozilla/pg19", "llama2-yarn-x16",
                      seq_len=65536, max_steps=400, learning_rate=2e-5, warmup_steps=20)
    result.output_dir, result.final_loss, result.model      # the merged model, in memory too

One process by default; `accelerate launch` runs the same call on many GPUs or nodes (DDP, FSDP,
DeepSpeed; see recipes/). The loop is accelerate's: it places the model, shards the batches across
processes, synchronises gradients and saves resumable checkpoints. What ctxext adds:

- the patch (`ctxext.patching.model`) before LoRA, so training sees the new frequencies and the merged
  checkpoint's config already carries them in every reader's spelling;
- data tokenized once and packed (`ctxext.training.packing`), optionally with PoSE position ids;
- the chunked LM-head loss (`ctxext.training.loss`): no full-sequence float32 logits;
- checkpoints every `save_every` steps in `OUTPUT.checkpoints/` (adapter weights, optimizer, RNG,
  step) and `resume=True`, which continues with exactly the samples an uninterrupted run would see:
  sample k of a run is fixed by (seed, k), and the log records which sequences each step trained on;
- the output assembled in a staged directory: merged weights, tokenizer, `adapter/`, `train_log.jsonl`
  and a model card, renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import __version__
from ..errors import CtxextError, first_line
from ..io import (atomic_write_json, atomic_write_text, check_apart, check_output_dir, mark, one_writer, removable,
                  staged_directory)
from .loss import causal_lm_loss
from ..rope.methods import resolve
from ..rope.plan import plan_patch
from ..rope.layout import read_layout

SCHEDULES = ("constant", "cosine")
LORA_TARGETS = ("attention", "all-linear")
LOG_NAME = "train_log.jsonl"
#: recipe fields a resumed run may change: they do not touch the data order or the weights
RESUMABLE_CHANGES = ("save_every",)
#: `method` value that trains with the scaling the checkpoint already carries (a searched longrope, say)
KEEP = "keep"


@dataclass(frozen=True)
class Recipe:
    """The training hyperparameters, validated at the boundary (every later step trusts them)."""

    seq_len: int | None = None  # the window to train for; None = original window x factor
    pose: bool = False  # PoSE: train on `pose_window`-token sequences whose positions span seq_len
    pose_window: int | None = None  # None = the original window
    max_steps: int = 400
    learning_rate: float = 2e-5
    warmup_steps: int = 20
    schedule: str = "constant"
    batch_size: int = 1  # sequences per process per micro-step
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    seed: int = 0
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target: str = "attention"  # q, k, v, o projections; or "all-linear"
    train_embeddings_and_norms: bool = False  # LongLoRA's LoRA+: embeddings and norms trained fully
    gradient_checkpointing: bool = True
    loss_chunk_size: int | None = None  # tokens per LM-head chunk; None = 64 MiB of float32 logits
    save_every: int = 50  # 0 = no checkpoints

    def __post_init__(self) -> None:
        positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "lora_r")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CtxextError(f"{name} must be a whole number greater than 0, got {value!r}.")
        for name, least in (("seq_len", 2), ("pose_window", 2), ("loss_chunk_size", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise CtxextError(f"{name} must be a whole number of tokens, at least {least}, got {value!r}.")
        for name in ("warmup_steps", "save_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CtxextError(f"{name} must be a whole number, 0 or more, got {value!r}.")
        checks = {
            "learning_rate": self.learning_rate > 0,
            "lora_alpha": self.lora_alpha > 0,
            "weight_decay": self.weight_decay >= 0,
            "max_grad_norm": self.max_grad_norm >= 0,
            "lora_dropout": 0 <= self.lora_dropout < 1,
        }
        for name, ok in checks.items():
            if not (ok and math.isfinite(getattr(self, name))):
                raise CtxextError(f"{name} is out of range: got {getattr(self, name)!r}.")
        if self.schedule not in SCHEDULES:
            raise CtxextError(f"Unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}.")
        if self.lora_target not in LORA_TARGETS:
            raise CtxextError(f"Unknown lora_target {self.lora_target!r}; choose one of {', '.join(LORA_TARGETS)}.")
        if self.pose_window is not None and not self.pose:
            raise CtxextError("pose_window is set but pose is off; pass pose=True (CLI: --pose) or drop pose_window.")

    def lengths(self, original_window: int, window: int) -> tuple[int, int | None]:
        """(tokens per training sequence, PoSE target window or None) for a patch's windows."""
        target = self.seq_len or window
        if not self.pose:
            return target, None
        length = self.pose_window or original_window
        if length >= target:
            raise CtxextError(
                f"PoSE trains on sequences shorter than the target window, but the PoSE window ({length}) "
                f"is not shorter than seq_len ({target}); lower --pose-window or raise --seq-len."
            )
        return length, target


def learning_rate_at(step: int, recipe: Recipe) -> float:
    """The learning rate of optimizer step `step` (1-based): linear warmup, then constant or cosine to 0."""
    peak, warmup = recipe.learning_rate, recipe.warmup_steps
    if step <= warmup:
        return peak * step / warmup
    if recipe.schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, recipe.max_steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    """What `finetune` returns: where the checkpoint is, the merged model in memory, and the log."""

    output_dir: Path
    model: Any  # the merged model in eval mode (None on the other processes of an FSDP run)
    tokenizer: Any
    log: list[dict] = field(default_factory=list)  # one record per optimizer step, as in train_log.jsonl

    @property
    def final_loss(self) -> float:
        return self.log[-1]["loss"]

    @property
    def first_loss(self) -> float:
        return self.log[0]["loss"]


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """Where a run keeps its checkpoints and log until the output is complete: `OUTPUT.checkpoints`."""
    output = Path(output_dir).expanduser()
    return output.with_name(output.name + ".checkpoints")


@one_writer("output_dir")  # issue 10: one run writes an output (and its .checkpoints) at a time
def finetune(
    model: Any,
    method: str,
    factor: float | None,
    dataset: Any,
    output_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    seq_len: int | None = None,
    pose: bool = False,
    pose_window: int | None = None,
    max_steps: int = 400,
    learning_rate: float = 2e-5,
    warmup_steps: int = 20,
    schedule: str = "constant",
    batch_size: int = 1,
    gradient_accumulation_steps: int = 1,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    lora_target: str = "attention",
    train_embeddings_and_norms: bool = False,
    gradient_checkpointing: bool = True,
    loss_chunk_size: int | None = None,
    save_every: int = 50,
    resume: bool = False,
    overwrite: bool = False,
    original_max_position_embeddings: int | None = None,
    replace: bool = False,
    split: str = "train",
    text_field: str | None = None,
    dtype: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
    **params: float | None,
) -> TrainResult:
    """Patch `model` for `method` at `factor` x its window, LoRA fine-tune it on `dataset`, merge, save.

    method "keep" (factor None) trains with the scaling the checkpoint already carries, unchanged.

    model: a hub id or checkpoint directory (loaded here, with its tokenizer), or a loaded causal LM
        (patched and trained in place; pass `tokenizer` to save one with it).
    dataset: a .txt/.jsonl/.json/.parquet file or folder, a `datasets` hub name, a `datasets.Dataset`
        with a `text` column, or a 1-D sequence of token ids.
    original_max_position_embeddings, replace, params: as for `patch_model` (params: beta_fast,
        beta_slow, attention_factor, ...; replace: discard a scaling the model already carries).
    on_step: called on the main process with each step's log record.

    Writes `output_dir` (merged checkpoint that stock transformers loads, tokenizer, `adapter/`,
    `train_log.jsonl`, README.md) and returns a TrainResult. Bad input raises CtxextError with one
    sentence, before the model is loaded wherever the input allows it.
    """
    recipe = Recipe(
        seq_len=seq_len, pose=pose, pose_window=pose_window, max_steps=max_steps, learning_rate=learning_rate,
        warmup_steps=warmup_steps, schedule=schedule, batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, seed=seed, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_target=lora_target, train_embeddings_and_norms=train_embeddings_and_norms,
        gradient_checkpointing=gradient_checkpointing, loss_chunk_size=loss_chunk_size, save_every=save_every,
    )  # fmt: skip
    if method == KEEP:
        method, factor, original_max_position_embeddings, params = _kept_scaling(
            model, factor, original_max_position_embeddings, replace, params)
        replace = True  # the same scaling again, from the original window it records
    scaling = resolve(method, factor, original_max_position_embeddings, **params)
    source = _check_model(model)  # issue 10: checked first, so its own problems are what gets reported
    # issue 10: the output rule of ctxext.io (never the model or the data, --overwrite only on ctxext's own)
    output = check_output_dir(output_dir, overwrite, sources=(model, dataset))
    run_dir = checkpoint_dir(output)
    check_apart(run_dir, (model, dataset))
    if run_dir.exists() and not (resume or overwrite):
        raise CtxextError(
            f"{run_dir} holds the checkpoints of an interrupted run; pass --resume to continue it "
            "or --overwrite to start over."
        )
    if os.path.lexists(run_dir) and not removable(run_dir):  # issue 10: --overwrite deletes only ctxext's own
        raise CtxextError(
            f"{run_dir} exists and ctxext did not write it (it has no .ctxext marker), so it will not use or delete "
            "it; move it away or choose another --output."
        )

    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, set_seed

    from .packing import read_dataset, tokenize

    accelerator = Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=recipe.gradient_accumulation_steps, sync_with_dataloader=False
        )
    )
    say = _printer(accelerator.is_main_process and progress)
    described = str(dataset) if isinstance(dataset, (str, os.PathLike)) else f"in-memory {type(dataset).__name__}"
    with accelerator.main_process_first():  # the main process downloads and tokenizes; the others read caches
        data = read_dataset(dataset, split=split, text_field=text_field)
    config = _read_config(model, source)
    patch = plan_patch(read_layout(config), scaling, replace=replace)
    if isinstance(model, (str, os.PathLike)) and os.path.isdir(source):  # issue 10: before the token cache
        from ..loading import check_weights_fit

        check_weights_fit(source)
    patch_args = dict(original_max_position_embeddings=original_max_position_embeddings, replace=replace, **params)
    length, pose_target = recipe.lengths(patch.original_max_position_embeddings, patch.window)
    if tokenizer is None and isinstance(model, (str, os.PathLike)):
        from ..loading import load_tokenizer

        tokenizer = load_tokenizer(source)
    with accelerator.main_process_first():  # issue 10: data too short for one sequence is not cached
        tokens = tokenize(data, tokenizer, cache_dir, min_tokens=length)
    if len(tokens) < length:
        raise CtxextError(
            f"Dataset {described} holds {len(tokens):,} tokens, fewer than one training sequence of {length:,}; "
            "give more text or a smaller --seq-len."
        )
    vocab_size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if vocab_size and tokenizer is not None and len(tokenizer) > vocab_size:
        raise CtxextError(
            f"The tokenizer has {len(tokenizer):,} tokens but the model's vocabulary only {vocab_size:,}; "
            "use the model's own tokenizer."
        )
    if vocab_size and tokenizer is None and int(tokens.max()) >= vocab_size:
        raise CtxextError(f"Token id {int(tokens.max())} is outside the model's vocabulary of {vocab_size:,}.")

    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded and not isinstance(model, (str, os.PathLike)):
        raise CtxextError("Under FSDP, give the model as a hub id or checkpoint directory, not a loaded model object.")
    world = accelerator.num_processes
    run = {
        "ctxext": __version__,
        "source": source,
        "method": scaling.method,
        "factor": scaling.factor,
        "params": {k: v for k, v in scaling.params.items() if v is not None},
        "original_max_position_embeddings": patch.original_max_position_embeddings,
        "replace": replace,
        "dataset": described,
        "tokens": int(len(tokens)),
        "processes": world,
        **asdict(recipe),
    }
    start = _resume_point(run_dir, run, resume, say)

    # -- the model: load, patch, LoRA ---------------------------------------------------------------
    from torch.utils.data import DataLoader

    from ..loading import load_model, pick_dtype
    from .packing import SampleStream
    from ..patching.model import patch_model

    set_seed(recipe.seed)
    if isinstance(model, (str, os.PathLike)):
        model, _ = load_model(source, device=str(accelerator.device), dtype=dtype)
    patch_model(model, scaling.method, scaling.factor, **patch_args)
    peft_model = _with_lora(model, recipe)
    module = _LossModule(peft_model, recipe.loss_chunk_size)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=recipe.learning_rate, betas=(0.9, 0.95), weight_decay=recipe.weight_decay, eps=1e-8
    )
    micro_batches = recipe.max_steps * recipe.gradient_accumulation_steps  # per process
    samples = SampleStream(
        tokens, length, total=micro_batches * recipe.batch_size * world, seed=recipe.seed, pose_target=pose_target
    )
    loader = DataLoader(samples, batch_size=recipe.batch_size, shuffle=False)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    _register_trainable_checkpointing(accelerator)

    if accelerator.is_main_process:
        if start is None and run_dir.exists():
            shutil.rmtree(run_dir)  # --overwrite: start over
        run_dir.mkdir(parents=True, exist_ok=True)
        mark(run_dir, "run")  # issue 10: ctxext's own, so a later --overwrite may remove it
        atomic_write_json(run_dir / "run.json", run)
    accelerator.wait_for_everyone()
    log = _read_log(run_dir, upto=0 if start is None else start.step)
    first_step = 0
    if start is not None:
        accelerator.load_state(str(start.path))
        first_step = start.step
        loader = accelerator.skip_first_batches(loader, first_step * recipe.gradient_accumulation_steps)
    if accelerator.is_main_process:
        atomic_write_text(run_dir / LOG_NAME, "".join(json.dumps(r) + "\n" for r in log))

    n_trainable = sum(p.numel() for p in trainable)
    global_batch = recipe.batch_size * recipe.gradient_accumulation_steps * world
    say(
        f"ctxext train: {scaling.method} x{scaling.factor:g} to {patch.window:,} tokens; "
        f"{samples.n_sequences:,} sequences of {length:,} tokens"
        + (f" (PoSE positions span {pose_target:,})" if pose_target else "")
        + f"; {recipe.max_steps} steps x {global_batch} sequences on {world} process(es); "
        f"{n_trainable:,} trainable parameters; checkpoints in {run_dir}"
    )

    # -- the loop ----------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    bar = tqdm(
        total=recipe.max_steps, initial=first_step, unit="step", desc="train", dynamic_ncols=True,
        disable=not (progress and accelerator.is_main_process),
    )  # fmt: skip
    batches = iter(loader)
    module.train()
    for step in range(first_step + 1, recipe.max_steps + 1):
        started = time.perf_counter()
        lr = learning_rate_at(step, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses, sequences = [], []
        for _ in range(recipe.gradient_accumulation_steps):
            batch = next(batches)
            with accelerator.accumulate(module):
                loss = module(batch["input_ids"], batch.get("position_ids"))
                accelerator.backward(loss)
                if accelerator.sync_gradients and recipe.max_grad_norm:
                    accelerator.clip_grad_norm_(module.parameters(), recipe.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.detach())
            sequences.append(batch["sequence"])
        step_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        # [processes, accumulation x batch]: the packed sequences each process trained on
        seen = accelerator.gather(torch.cat(sequences)[None]).tolist()
        elapsed = time.perf_counter() - started
        record = {
            "step": step,
            "loss": round(step_loss, 6),
            "lr": lr,
            "tokens_per_s": round(global_batch * length / elapsed, 1),
            "sequences": seen,
        }
        log.append(record)
        if accelerator.is_main_process:
            with open(run_dir / LOG_NAME, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update()
        if recipe.save_every and step % recipe.save_every == 0 and step < recipe.max_steps:
            _save_checkpoint(accelerator, run_dir, step)
        if on_step is not None and accelerator.is_main_process:
            on_step(record)
    bar.close()

    # -- merge and save ----------------------------------------------------------------------------
    if sharded:
        def unsharded() -> Any:  # on the CPU, in the dtype training used on the device
            trained_dtype = str(pick_dtype(dtype, accelerator.device.type)).removeprefix("torch.")
            copy, _ = load_model(source, device="cpu", dtype=trained_dtype)
            patch_model(copy, scaling.method, scaling.factor, **patch_args)
            return _LossModule(_with_lora(copy, recipe), recipe.loss_chunk_size)

        unwrapped = _gather_unsharded(accelerator, module, unsharded)  # None on the other processes
    else:
        unwrapped = accelerator.unwrap_model(module).peft_model
    if accelerator.is_main_process:
        unwrapped.save_pretrained(run_dir / "adapter")
    merged = None if unwrapped is None else _merge(unwrapped)
    if accelerator.is_main_process:
        card_recipe = _card_recipe(run, log, length, pose_target, global_batch, n_trainable)
        _write_output(output, overwrite, merged, tokenizer, run_dir, source, patch, card_recipe)
        shutil.rmtree(run_dir, ignore_errors=True)
        say(f"ctxext train: wrote {output} (loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f})")
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return TrainResult(output_dir=output, model=merged, tokenizer=tokenizer, log=log)


# -- helpers ---------------------------------------------------------------------------------------


def _printer(enabled: bool) -> Callable[[str], None]:
    """Progress messages on stderr, from the main process only."""

    def say(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr, flush=True)

    return say


def _check_model(model: Any) -> str:
    """The model's name for the card and the run record; CtxextError for something that is no model."""
    if isinstance(model, (str, os.PathLike)):
        from ..loading import check_source

        return check_source(model, weights=True)  # issue 10: bad weights refused before any data work
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_decoder"):
        raise CtxextError(
            f"model must be a hub id, a checkpoint directory or a transformers causal LM, got {type(model).__name__}."
        )
    # issue 10: a class name is no hub id (the model card would name it as the base model)
    return getattr(config, "_name_or_path", "") or f"{type(model).__name__} (in memory)"


def _kept_scaling(model: Any, factor: Any, original: Any, replace: bool, params: dict) -> tuple:
    """(method, factor, original window, params) of the scaling the checkpoint carries, for method "keep"."""
    from ..rope.layout import current_scaling

    if factor is not None or original is not None or replace or params:
        raise CtxextError(
            "method 'keep' trains with the scaling the checkpoint already carries; drop the factor, "
            "original_max_position_embeddings, replace and method parameters (or name a method to patch with)."
        )
    kept = current_scaling(read_layout(_read_config(model, _check_model(model))))
    return kept["method"], kept["factor"], kept["original_max_position_embeddings"], kept["params"]


def _read_config(model: Any, source: str) -> dict:
    """The model's config as a dict, without loading any weights."""
    if not isinstance(model, (str, os.PathLike)):
        return model.config.to_dict()
    from transformers import AutoConfig

    if os.path.isdir(source):  # issue 10: wrong-typed values get ctxext's sentence before transformers reads them
        from ..patching.checkpoint import read_config
        from ..rope.layout import check_config_types

        check_config_types(read_config(Path(source)))
    try:
        return AutoConfig.from_pretrained(source).to_dict()
    except Exception as err:  # the user's config.json: transformers' validation raises several types
        raise CtxextError(f"Could not read the config of {source}: {first_line(err)}.") from None


@dataclass(frozen=True)
class _Checkpoint:
    path: Path
    step: int


def _checkpoints(run_dir: Path) -> list[_Checkpoint]:
    """Complete checkpoints (their trainer_state.json is written last), oldest first."""
    found = []
    for path in run_dir.glob("step-*"):
        try:
            found.append(_Checkpoint(path, int(json.loads((path / "trainer_state.json").read_text())["step"])))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(found, key=lambda c: c.step)


def _resume_point(run_dir: Path, run: dict, resume: bool, say: Callable[[str], None]) -> _Checkpoint | None:
    """The checkpoint to continue from, after checking that this run repeats the interrupted one."""
    if not resume:
        return None
    if not run_dir.exists():
        say(f"ctxext train: nothing to resume in {run_dir}; starting from step 0.")
        return None
    try:
        previous = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
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
    checkpoints = _checkpoints(run_dir)
    if not checkpoints:
        say(f"ctxext train: {run_dir} holds no complete checkpoint yet; starting from step 0.")
        return None
    say(f"ctxext train: resuming from {checkpoints[-1].path} (step {checkpoints[-1].step}).")
    return checkpoints[-1]


def _read_log(run_dir: Path, upto: int) -> list[dict]:
    """The log records of steps 1..upto (later ones belong to steps a resumed run repeats).

    Issue 10: a torn last line (a power cut mid-write) is dropped: its step is past the last checkpoint,
    so the resumed run repeats it. Damage anywhere else, or a step missing, is refused.
    """
    path = run_dir / LOG_NAME
    if upto == 0 or not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            step = record["step"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break  # torn by the interruption: written after the checkpoint we resume from
            raise CtxextError(f"Line {number} of {path} is damaged; pass --overwrite to start over.") from None
        records.append(record)
    kept = [r for r in records if r["step"] <= upto]
    if [r["step"] for r in kept] != list(range(1, upto + 1)):
        raise CtxextError(f"{path} does not record steps 1 to {upto} of the checkpoint; pass --overwrite to start over.")
    return kept


def _save_checkpoint(accelerator: Any, run_dir: Path, step: int) -> None:
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
        for old in _checkpoints(run_dir)[:-1]:
            shutil.rmtree(old.path, ignore_errors=True)
    accelerator.wait_for_everyone()


def _register_trainable_checkpointing(accelerator: Any) -> None:
    """Checkpoints hold the trainable weights only (LoRA, plus embeddings and norms if trained), not
    a copy of the frozen base model. FSDP and DeepSpeed save their own sharded states instead."""
    from accelerate.utils import SAFE_WEIGHTS_NAME
    from safetensors.torch import load_file

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if len(weights) != len(models):
            return
        for i, model in enumerate(models):
            weights[i] = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def load_hook(models: list, input_dir: str) -> None:
        for i, model in enumerate(models):
            name = SAFE_WEIGHTS_NAME if i == 0 else SAFE_WEIGHTS_NAME.replace(".", f"_{i}.")
            state = load_file(os.path.join(input_dir, name))
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


def _attention_projections(model: Any) -> list[str]:
    """Names of the linear layers inside attention modules: q/k/v/o, qkv_proj, query_key_value, dense."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and "." in name:
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if "Attention" in type(parent).__name__:
                names.add(name.rsplit(".", 1)[1])
    if not names:
        raise CtxextError(
            f"Found no linear layers inside the attention modules of {type(model).__name__}; "
            "use lora_target='all-linear' (CLI: --lora-target all-linear)."
        )
    return sorted(names)


def _embeddings_and_norms(model: Any) -> list[str]:
    """Full names of the input embedding and every normalisation module (LongLoRA's trainable extras)."""
    embedding = model.get_input_embeddings()
    return [n for n, m in model.named_modules() if m is embedding or "Norm" in type(m).__name__]


def _with_lora(model: Any, recipe: Recipe) -> Any:
    from peft import LoraConfig, get_peft_model

    if recipe.gradient_checkpointing:
        # non-reentrant: works under DDP and needs no input that requires grad
        options = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    model.config.use_cache = False
    extras = _embeddings_and_norms(model) if recipe.train_embeddings_and_norms else None
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    # a trained tied embedding must stay tied to the head; peft offers that from 0.18 on
    tying = {"ensure_weight_tying": True} if extras and tied else {}
    if tying and "ensure_weight_tying" not in LoraConfig.__dataclass_fields__:
        raise CtxextError(
            "Training the embeddings of a model whose head is tied to them needs peft 0.18 or newer; upgrade peft."
        )
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules="all-linear" if recipe.lora_target == "all-linear" else _attention_projections(model),
        modules_to_save=extras,
        task_type="CAUSAL_LM",
        **tying,
    )
    with warnings.catch_warnings():  # peft still asks for transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


class _LossModule(nn.Module):
    """What accelerate wraps (DDP, FSDP): the LoRA model and the chunked loss, so that the forward
    pass, and with it gradient synchronisation, goes through the wrapper."""

    def __init__(self, peft_model: Any, chunk_size: int | None):
        super().__init__()
        self.peft_model = peft_model
        self.chunk_size = chunk_size
        # FSDP's transformer auto-wrap policy reads the layer classes from the wrapped module
        self._no_split_modules = peft_model.get_base_model()._no_split_modules

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids [B, T], position_ids [B, T] or None -> mean next-token loss
        return causal_lm_loss(self.peft_model.get_base_model(), input_ids, position_ids, self.chunk_size)


def _gather_unsharded(accelerator: Any, module: Any, build: Callable[[], Any]) -> Any:
    """FSDP shards every weight across processes: gather the full state onto the main process and load
    it into an unsharded copy of the LoRA model built there (the other processes get None)."""
    state = accelerator.get_state_dict(module)  # every process takes part; the main one gets the full dict
    if not accelerator.is_main_process:
        return None
    copy = build()
    copy.load_state_dict(state)
    return copy.peft_model


def _merge(peft_model: Any) -> Any:
    """LoRA (and trained embeddings/norms) folded into the weights: a plain transformers model."""
    merged = peft_model.merge_and_unload()
    if hasattr(merged, "activation_checkpointing_disable"):  # the name since transformers 5.2x
        merged.activation_checkpointing_disable()
    else:
        merged.gradient_checkpointing_disable()
    merged.config.use_cache = True
    return merged.eval()


def _card_recipe(run: dict, log: list[dict], length: int, pose_target: int | None, global_batch: int, n_trainable: int) -> dict:
    targets = "all linear layers" if run["lora_target"] == "all-linear" else "the attention projections"
    lora = f"r={run['lora_r']}, alpha={run['lora_alpha']:g}, dropout={run['lora_dropout']:g} on {targets}"
    if run["train_embeddings_and_norms"]:
        lora += "; embeddings and norms trained in full (LongLoRA)"
    window = f"{length:,} tokens" if pose_target is None else f"{length:,}-token sequences, PoSE positions over {pose_target:,}"
    schedule = f"{run['warmup_steps']} warmup steps, then {run['schedule']}"
    return {
        "training sequences": window,
        "data": f"{run['dataset']} ({run['tokens']:,} tokens; documents joined with EOS and packed)",
        "steps": f"{len(log)} x {global_batch} sequences ({len(log) * global_batch * length:,} tokens) on {run['processes']} process(es)",
        "optimizer": f"AdamW, betas (0.9, 0.95), lr {run['learning_rate']:g}, {schedule}, weight decay {run['weight_decay']:g}, gradient clipping {run['max_grad_norm']:g}",
        "LoRA": f"{lora}; {n_trainable:,} trainable parameters; merged into the weights (adapter in `adapter/`)",
        "gradient checkpointing": "on" if run["gradient_checkpointing"] else "off",
        "seed": run["seed"],
        "training loss": f"{log[0]['loss']:.4f} (step 1) -> {log[-1]['loss']:.4f} (step {log[-1]['step']}); per step in `train_log.jsonl`",
    }


def _write_output(output: Path, overwrite: bool, merged: Any, tokenizer: Any, run_dir: Path, source: str, patch: Any, recipe: dict) -> None:
    from ..patching.card import render_model_card

    with staged_directory(output, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.copytree(run_dir / "adapter", tmp / "adapter")
        shutil.copy2(run_dir / LOG_NAME, tmp / LOG_NAME)
        (tmp / "README.md").write_text(render_model_card(source, patch, recipe=recipe), encoding="utf-8")
