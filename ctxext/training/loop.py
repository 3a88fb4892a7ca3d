"""The training loop, and the seeded random state it runs in.

    with seeded(recipe.seed):          # the caller's random generators are as they were afterwards
        log = train_loop(accelerator, module, optimizer, loader, recipe, ...)

accelerate's loop conventions: `accumulate` for gradient accumulation, `clip_grad_norm_` on the
synchronising micro-step, `reduce` / `gather` so every process logs the same record.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .recipe import Recipe, learning_rate_at
from .resume import append_log, save_checkpoint


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's, numpy's and torch's global generators (accelerate's `set_seed`) inside the block only.

    LoRA's initialisation, dropout and whatever peft or transformers draw use the global generators,
    so the run seeds them; on the way out their states are put back as the caller left them.
    """
    from accelerate.utils import set_seed

    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        set_seed(seed)
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def train_loop(
    accelerator: Any,
    module: Any,
    optimizer: Any,
    loader: Any,
    recipe: Recipe,
    *,
    length: int,
    first_step: int,
    log: list[dict],
    run_dir: Path,
    progress: bool,
    on_step: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Optimizer steps first_step + 1 .. recipe.max_steps; returns `log` with one record per step appended.

    Each record (written to train_log.jsonl as it is made) holds the step, the mean loss over every
    process and micro-step, the learning rate, tokens per second and which packed sequences each
    process trained on. Checkpoints every `save_every` steps; `on_step` is called on the main process.
    """
    from tqdm.auto import tqdm

    world = accelerator.num_processes
    global_batch = recipe.batch_size * recipe.gradient_accumulation_steps * world
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
                loss = module(batch["input_ids"], batch.get("position_ids"), batch.get("completion_mask"))
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
            append_log(run_dir, record)
        # the tracker of --report-to, if any (accelerate logs from the main process; a no-op without trackers)
        accelerator.log({k: record[k] for k in ("loss", "lr", "tokens_per_s")}, step=step)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        bar.update()
        if recipe.save_every and step % recipe.save_every == 0 and step < recipe.max_steps:
            save_checkpoint(accelerator, run_dir, step)
        if on_step is not None and accelerator.is_main_process:
            on_step(record)
    bar.close()
    return log
