"""Fine-tune a RoPE-patched causal LM for its longer window with LoRA: plan, data, model, loop, save.

    from ctxext import finetune
    from ctxext.training.recipe import Recipe
    result = finetune("meta-llama/Llama-2-7b-hf", "yarn", 16, "emozilla/pg19", "llama2-yarn-x16",
                      Recipe(seq_len=65536, max_steps=400, learning_rate=2e-5, warmup_steps=20))
    result = finetune(..., seq_len=65536, max_steps=400)     # the same, the recipe's fields as keywords
    result.output_dir, result.final_loss, result.model      # the merged model, in memory too

One process by default; `accelerate launch` runs the same call on many GPUs or nodes (DDP, FSDP,
DeepSpeed; see recipes/). The loop is accelerate's: it places the model, shards the batches across
processes, synchronises gradients and saves resumable checkpoints. The stages, each its own module:

- plan: the recipe (`ctxext.training.recipe`, every default in one place) and the patch, planned
  once from the config (`ctxext.rope.plan`) before anything is loaded;
- data: tokenized once and packed (`ctxext.training.packing`), optionally with PoSE position ids;
- model: loaded where it belongs (under FSDP, no full copy on any GPU), patched with that plan,
  LoRA added, the chunked LM-head loss around it (`ctxext.training.model`, `ctxext.training.loss`);
- loop: seeded without touching the caller's random state (`ctxext.training.loop`), checkpoints
  every `save_every` steps and `resume=True` continuing with exactly the samples an uninterrupted
  run would see (`ctxext.training.resume`);
- save: merged weights, tokenizer, `adapter/`, `train_log.jsonl` and a model card in a staged
  directory, renamed into place only when complete (`ctxext.training.save`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..errors import CtxextError
from ..io import check_apart, check_output_dir, one_writer, removable
from ..rope.layout import read_layout
from ..rope.methods import METHOD_PARAMETERS, resolve
from ..rope.plan import RopePatch, plan_patch
from .loop import seeded, train_loop
from .model import check_model, empty_model, fsdp_plugin, load_for_training, read_config, trainable_module, training_dtype
from .packing import SampleStream, check_tokens, describe_dataset, has_completions, read_dataset, tokenize
from .recipe import RECIPE_FIELDS, TRACKERS, Recipe, build_recipe, learning_rate_at  # noqa: F401  (learning_rate_at: public name)
from .resume import (  # noqa: F401  (checkpoint_dir: public name)
    TRACKER_LOGS,
    checkpoint_dir,
    refuse_leftovers,
    register_trainable_checkpointing,
    restore,
    resume_point,
    start_run_dir,
)
from .save import card_recipe, save_run

#: `method` value that trains with the scaling the checkpoint already carries (a searched longrope, say)
KEEP = "keep"


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


@one_writer("output_dir")  # one run writes an output (and its .checkpoints) at a time
def finetune(
    model: Any,
    method: str,
    factor: float | None,
    dataset: Any,
    output_dir: str | os.PathLike,
    recipe: Recipe | None = None,
    *,
    tokenizer: Any = None,
    original_max_position_embeddings: int | None = None,
    replace: bool = False,
    cache_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[dict], None] | None = None,
    **keywords: Any,
) -> TrainResult:
    """Patch `model` for `method` at `factor` x its window, LoRA fine-tune it on `dataset`, merge, save.

    method "keep" (factor None) trains with the scaling the checkpoint already carries, unchanged.

    model: a hub id or checkpoint directory (loaded here, with its tokenizer), or a loaded causal LM
        (patched and trained in place; pass `tokenizer` to save one with it).
    dataset: a .txt/.jsonl/.json/.parquet file or folder, a `datasets` hub name, a `datasets.Dataset`
        with a `text` column, or a 1-D sequence of token ids.
    recipe: the training hyperparameters (`Recipe`; default: its defaults). `keywords` may name any
        recipe field (`max_steps=200`), which then overrides the recipe, and the method's parameters
        (`beta_fast`, `attention_factor`, ...); anything else is refused with the valid names.
    original_max_position_embeddings, replace: as for `patch_model` (replace: discard a scaling the
        model already carries).
    on_step: called on the main process with each step's log record.

    Writes `output_dir` (merged checkpoint that stock transformers loads, tokenizer, `adapter/`,
    `train_log.jsonl`, README.md) and returns a TrainResult. Bad input raises CtxextError with one
    sentence, before the model is loaded wherever the input allows it.
    """
    from accelerate.utils import DistributedType

    # -- plan: everything that needs no weights, the patch planned once -------------------------------
    recipe, params = _split_keywords(recipe, keywords)
    if method == KEEP:
        method, factor, original_max_position_embeddings, params = _kept_scaling(
            model, factor, original_max_position_embeddings, replace, params)
        replace = True  # the same scaling again, from the original window it records
    scaling = resolve(method, factor, original_max_position_embeddings, **params)
    source = check_model(model)  # checked first, so its own problems are what gets reported
    # the output rule of ctxext.io: never the model or the data, --overwrite only on ctxext's own
    output = check_output_dir(output_dir, overwrite, sources=(model, dataset))
    run_dir = checkpoint_dir(output)
    check_apart(run_dir, (model, dataset))
    refuse_leftovers(run_dir, resume, overwrite)
    if os.path.lexists(run_dir) and not removable(run_dir):  # --overwrite deletes only ctxext's own
        raise CtxextError(
            f"{run_dir} exists and ctxext did not write it (it has no .ctxext marker), so it will not use or delete "
            "it; move it away or choose another --output."
        )
    accelerator = _accelerator(recipe, run_dir)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded and not isinstance(model, (str, os.PathLike)):
        raise CtxextError("Under FSDP, give the model as a hub id or checkpoint directory, not a loaded model object.")
    say = _printer(accelerator.is_main_process and progress)
    config = read_config(model, source)
    patch = plan_patch(read_layout(config), scaling, replace=replace)  # the run's one plan: applied, never redone
    if isinstance(model, (str, os.PathLike)) and os.path.isdir(source):  # before the token cache
        from ..loading import check_weights_fit

        check_weights_fit(source)
    length, pose_target = recipe.lengths(patch.original_max_position_embeddings, patch.window)

    # -- data ---------------------------------------------------------------------------------------
    described = describe_dataset(dataset)
    with accelerator.main_process_first():  # the main process downloads and tokenizes; the others read caches
        data = read_dataset(dataset, split=recipe.split, text_field=recipe.text_field)
    if recipe.prompt_loss_weight != 1 and not has_completions(data):  # before anything is tokenized or cached
        raise CtxextError(
            f"prompt_loss_weight is {recipe.prompt_loss_weight:g}, but dataset {described} marks no completions; "
            "give `prompt` and `completion` columns (or pre-tokenized `input_ids` with a `completion_mask`), "
            "or leave prompt_loss_weight at 1."
        )
    if tokenizer is None and isinstance(model, (str, os.PathLike)):
        from ..loading import load_tokenizer

        tokenizer = load_tokenizer(source)
    with accelerator.main_process_first():  # data too short for one sequence is not cached
        tokens = tokenize(data, tokenizer, cache_dir, min_tokens=length)
    check_tokens(tokens, length, config, tokenizer, described)
    run = _run_record(source, patch, replace, described, len(tokens), accelerator.num_processes, recipe)

    start = resume_point(run_dir, run, resume, say)

    with seeded(recipe.seed):
        # -- model: load, patch (the plan above), LoRA, loss ------------------------------------------
        module, optimizer, loader, samples, n_trainable = _model_and_data(
            accelerator, model, source, patch, recipe, tokens, length, pose_target, sharded)

        # -- loop ---------------------------------------------------------------------------------------
        start_run_dir(accelerator, run_dir, run, start)
        if recipe.report_to:  # the run's identity as the tracker's hyperparameters (plain values only)
            accelerator.init_trackers("ctxext", config={k: v for k, v in run.items()
                                                        if isinstance(v, (int, float, str, bool))})
        log, loader, first_step = restore(accelerator, run_dir, start, loader, recipe.gradient_accumulation_steps)
        global_batch = recipe.batch_size * recipe.gradient_accumulation_steps * accelerator.num_processes
        say(
            f"ctxext train: {scaling.method} x{scaling.factor:g} to {patch.window:,} tokens; "
            f"{samples.n_sequences:,} sequences of {length:,} tokens"
            + (f" (PoSE positions span {pose_target:,})" if pose_target else "")
            + f"; {recipe.max_steps} steps x {global_batch} sequences on {accelerator.num_processes} process(es); "
            f"{n_trainable:,} trainable parameters; checkpoints in {run_dir}"
        )
        log = train_loop(accelerator, module, optimizer, loader, recipe, length=length, first_step=first_step,
                         log=log, run_dir=run_dir, progress=progress, on_step=on_step)
        for tracker in accelerator.trackers:  # flushed and closed before their logs are copied into the output
            tracker.finish()  # (not accelerator.end_training(), which also ends the process group saving needs)

        # -- save: adapter, merge, the output whole ---------------------------------------------------
        def rebuild() -> Any:  # FSDP: the unsharded model to assign the gathered weights to, on the meta device
            return trainable_module(empty_model(source, training_dtype(recipe.dtype, accelerator), "sdpa"), patch, recipe)

        merged = save_run(
            accelerator, module, sharded=sharded, rebuild=rebuild, output=output, overwrite=overwrite,
            tokenizer=tokenizer, run_dir=run_dir, source=source, patch=patch,
            card=lambda: card_recipe(run, log, length, pose_target, global_batch, n_trainable),
        )  # fmt: skip
    say(f"ctxext train: wrote {output} (loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f})")
    accelerator.free_memory()
    return TrainResult(output_dir=output, model=merged, tokenizer=tokenizer, log=log)


# -- the stages' helpers -----------------------------------------------------------------------------


def _split_keywords(recipe: Recipe | None, keywords: dict[str, Any]) -> tuple[Recipe, dict[str, Any]]:
    """(the recipe with its fields among `keywords` applied, the method parameters); anything else is refused."""
    unknown = sorted(set(keywords) - set(RECIPE_FIELDS) - set(METHOD_PARAMETERS))
    if unknown:
        raise CtxextError(
            f"finetune got unknown argument(s) {', '.join(unknown)}; valid recipe fields: {', '.join(RECIPE_FIELDS)}; "
            f"method parameters: {', '.join(METHOD_PARAMETERS)}."
        )
    fields = {k: v for k, v in keywords.items() if k in RECIPE_FIELDS}
    params = {k: v for k, v in keywords.items() if k not in RECIPE_FIELDS}
    return build_recipe(recipe, **fields), params


def _accelerator(recipe: Recipe, run_dir: Path) -> Any:
    """accelerate's Accelerator for this run: gradient accumulation as the recipe says; under an FSDP
    launch, memory-efficient loading on (see `ctxext.training.model`); the tracker of `report_to`, logging
    into the run directory's logs/ (which the output keeps)."""
    import importlib.util

    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    kwargs: dict[str, Any] = {}
    if recipe.report_to:
        package = TRACKERS[recipe.report_to]
        if importlib.util.find_spec(package) is None:
            raise CtxextError(f"report_to {recipe.report_to} needs the {package} package, which is not installed; "
                              f"pip install {package}, or drop --report-to.")
        kwargs.update(log_with=recipe.report_to, project_dir=str(run_dir / TRACKER_LOGS))
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # what accelerate launch sets for FSDP
        kwargs["fsdp_plugin"] = fsdp_plugin()
    return Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=recipe.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        **kwargs,
    )


def _run_record(source: str, patch: RopePatch, replace: bool, described: str, n_tokens: int, processes: int,
                recipe: Recipe) -> dict:
    """What identifies the run in run.json (a resume must repeat it) and the model card."""
    scaling = patch.scaling
    return {
        "ctxext": __version__,
        "source": source,
        "method": scaling.method,
        "factor": scaling.factor,
        "params": {k: v for k, v in scaling.params.items() if v is not None},
        "original_max_position_embeddings": patch.original_max_position_embeddings,
        "replace": replace,
        "dataset": described,
        "tokens": int(n_tokens),
        "processes": processes,
        **asdict(recipe),
    }


def _model_and_data(accelerator: Any, model: Any, source: str, patch: RopePatch, recipe: Recipe, tokens: Any,
                    length: int, pose_target: int | None, sharded: bool) -> tuple[Any, Any, Any, Any, int]:
    """(module, optimizer, loader, samples, trainable parameter count), prepared by accelerate: the model
    stage and the sample stream."""
    import torch
    from torch.utils.data import DataLoader

    if isinstance(model, (str, os.PathLike)):
        model = load_for_training(source, accelerator, recipe.dtype, sharded)
    module = trainable_module(model, patch, recipe)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=recipe.learning_rate, betas=(0.9, 0.95), weight_decay=recipe.weight_decay, eps=1e-8
    )
    micro_batches = recipe.max_steps * recipe.gradient_accumulation_steps  # per process
    world = accelerator.num_processes
    samples = SampleStream(
        tokens, length, total=micro_batches * recipe.batch_size * world, seed=recipe.seed, pose_target=pose_target
    )
    loader = DataLoader(samples, batch_size=recipe.batch_size, shuffle=False)
    n_trainable = sum(p.numel() for p in trainable)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    register_trainable_checkpointing(accelerator)
    return module, optimizer, loader, samples, n_trainable


def _printer(enabled: bool) -> Callable[[str], None]:
    """Progress messages on stderr, from the main process only."""

    def say(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr, flush=True)

    return say


def _kept_scaling(model: Any, factor: Any, original: Any, replace: bool, params: dict) -> tuple:
    """(method, factor, original window, params) of the scaling the checkpoint carries, for method "keep"."""
    from ..rope.layout import current_scaling

    if factor is not None or original is not None or replace or params:
        raise CtxextError(
            "method 'keep' trains with the scaling the checkpoint already carries; drop the factor, "
            "original_max_position_embeddings, replace and method parameters (or name a method to patch with)."
        )
    kept = current_scaling(read_layout(read_config(model, check_model(model))))
    return kept["method"], kept["factor"], kept["original_max_position_embeddings"], kept["params"]
