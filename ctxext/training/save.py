"""The save stage of a fine-tune: the adapter, the merged checkpoint and its model card, written whole.

    merged = save_run(accelerator, module, run, ...)    # OUTPUT/ appears only when it is complete

The adapter is saved into the run directory first; the merged model (LoRA folded into the weights,
a plain transformers model), its tokenizer, a copy of the adapter, the step log and a README.md
model card are assembled in a staged directory that is renamed into place at the end.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from ..io import staged_directory
from .resume import LOG_NAME, TRACKER_LOGS


def unsharded(accelerator: Any, module: Any, sharded: bool, rebuild: Callable[[], Any]) -> Any:
    """The trained LoRA model, whole, on the main process (None on the others of an FSDP run).

    FSDP shards every weight across processes: the full state is gathered onto the main process
    (every process takes part) and assigned to an unsharded model built there by `rebuild` with its
    weights on the meta device, so the gathered tensors become its weights without a second copy.
    """
    if not sharded:
        return accelerator.unwrap_model(module).peft_model
    from .model import assign_state

    state = accelerator.get_state_dict(module)  # the main process gets the full dict, on the CPU
    if not accelerator.is_main_process:
        return None
    return assign_state(rebuild(), state).peft_model


def merge(peft_model: Any) -> Any:
    """LoRA (and trained embeddings/norms) folded into the weights: a plain transformers model in eval mode."""
    merged = peft_model.merge_and_unload()
    if hasattr(merged, "activation_checkpointing_disable"):  # the name since transformers 5.2x
        merged.activation_checkpointing_disable()
    else:
        merged.gradient_checkpointing_disable()
    merged.config.use_cache = True
    return merged.eval()


def card_recipe(run: dict, log: list[dict], length: int, pose_target: int | None, global_batch: int, n_trainable: int) -> dict:
    """The model card's "Fine-tuning recipe" table: what was trained, on what, how, and the loss."""
    targets = "all linear layers" if run["lora_target"] == "all-linear" else "the attention projections"
    lora = f"r={run['lora_r']}, alpha={run['lora_alpha']:g}, dropout={run['lora_dropout']:g} on {targets}"
    if run["train_embeddings_and_norms"]:
        lora += "; embeddings and norms trained in full (LongLoRA)"
    window = f"{length:,} tokens" if pose_target is None else f"{length:,}-token sequences, PoSE positions over {pose_target:,}"
    schedule = f"{run['warmup_steps']} warmup steps, then {run['schedule']}"
    return {
        "training sequences": window,
        "data": f"{run['dataset']} ({run['tokens']:,} tokens; documents joined with EOS and packed)",
        "loss": "next-token cross-entropy on every token" if run["prompt_loss_weight"] == 1 else
                f"next-token cross-entropy, prompt tokens weighted {run['prompt_loss_weight']:g}, completion tokens 1",
        "steps": f"{len(log)} x {global_batch} sequences ({len(log) * global_batch * length:,} tokens) on {run['processes']} process(es)",
        "optimizer": f"AdamW, betas (0.9, 0.95), lr {run['learning_rate']:g}, {schedule}, weight decay {run['weight_decay']:g}, gradient clipping {run['max_grad_norm']:g}",
        "LoRA": f"{lora}; {n_trainable:,} trainable parameters; merged into the weights (adapter in `adapter/`)",
        "gradient checkpointing": "on" if run["gradient_checkpointing"] else "off",
        "seed": run["seed"],
        "training loss": f"{log[0]['loss']:.4f} (step 1) -> {log[-1]['loss']:.4f} (step {log[-1]['step']}); per step in `train_log.jsonl`",
    }


def write_output(output: Path, overwrite: bool, merged: Any, tokenizer: Any, run_dir: Path, source: str, patch: Any, recipe: dict) -> None:
    """OUTPUT/: merged weights, tokenizer, adapter/, train_log.jsonl and README.md, renamed into place whole."""
    from ..patching.card import render_model_card
    from ..rope.readers import reader_notes

    with staged_directory(output, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.copytree(run_dir / "adapter", tmp / "adapter")
        shutil.copy2(run_dir / LOG_NAME, tmp / LOG_NAME)
        if (run_dir / TRACKER_LOGS).is_dir():  # --report-to's tracker logs (tensorboard's event files)
            shutil.copytree(run_dir / TRACKER_LOGS, tmp / TRACKER_LOGS)
        (tmp / "README.md").write_text(render_model_card(source, patch, recipe=recipe,
                                                             notes=reader_notes(merged.config.to_dict())), encoding="utf-8")


def save_run(
    accelerator: Any,
    module: Any,
    *,
    sharded: bool,
    rebuild: Callable[[], Any],
    output: Path,
    overwrite: bool,
    tokenizer: Any,
    run_dir: Path,
    source: str,
    patch: Any,
    card: Callable[[], dict],
) -> Any:
    """Save the adapter, merge it, write OUTPUT/ and drop the run directory; the merged model (None off the main process)."""
    peft_model = unsharded(accelerator, module, sharded, rebuild)
    if accelerator.is_main_process:
        peft_model.save_pretrained(run_dir / "adapter")
    merged = None if peft_model is None else merge(peft_model)
    if accelerator.is_main_process:
        write_output(output, overwrite, merged, tokenizer, run_dir, source, patch, card())
        shutil.rmtree(run_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return merged
