"""`ctxext patch`: write a RoPE-scaled copy of a checkpoint (config only, weights hard-linked)."""

from __future__ import annotations

import argparse

from .options import number, number_list, positive_int
from ..rope.methods import METHOD_CHOICES, METHOD_PARAMETERS, METHODS, SEQUENCE_PARAMS

EXAMPLES = """\
examples:
  # YaRN, 8x the model's window, from the hub
  ctxext patch meta-llama/Llama-2-7b-hf --method yarn --factor 8 --output llama2-yarn-x8

  # Position Interpolation on a local checkpoint, replacing an existing output
  ctxext patch ./my-model --method pi --factor 4 --output my-model-pi-x4 --overwrite

  # a model that already carries scaling (Llama 3.1's llama3): start again from its original window
  ctxext patch meta-llama/Llama-3.1-8B --method yarn --factor 32 --replace --output llama31-yarn-x32

  # LongRoPE with per-frequency factors (rotary dims / 2 of them) from a JSON list or a comma list
  ctxext patch ./my-model --method longrope --factor 8 --long-factor factors.json --output my-model-longrope-x8

  # Phi-3's config accepts only longrope: yarn is written as longrope with yarn's frequencies and scale
  ctxext patch microsoft/Phi-3-mini-4k-instruct --method yarn --factor 8 --output phi3-yarn-x8

methods:
""" + "\n".join(f"  {m.name:<13} {m.summary}" for m in METHODS.values())

#: method parameters that get a command-line option (HF spelling, dashes on the command line): the registry's
PARAMS = tuple(name for name in METHOD_PARAMETERS if name not in SEQUENCE_PARAMS)
#: per-frequency parameters: comma-separated numbers or a .json list
LIST_PARAMS = SEQUENCE_PARAMS


def add_scaling_arguments(parser: argparse.ArgumentParser, keep: bool = False) -> None:
    """--method, --factor and the method parameters, shared by every command that scales a model.

    keep: also accept `--method keep` (the scaling the checkpoint already carries; no --factor then).
    """
    choices = (*METHOD_CHOICES, "keep") if keep else METHOD_CHOICES
    parser.add_argument("--method", required=True, choices=choices, metavar="METHOD",
                        help=f"scaling method: {', '.join(choices)}"
                        + ("; keep: the scaling MODEL already carries, as it is (a searched longrope checkpoint)" if keep else ""))
    parser.add_argument("--factor", required=not keep, type=number,
                        help="new window / original window (>= 1)" + ("; not with --method keep" if keep else ""))
    parser.add_argument("--original-max-position-embeddings", type=positive_int, metavar="N",
                        help="the pre-training window (default: what the config records)")
    for name in PARAMS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=number, dest=name, metavar="X",
                            help=f"{name} (only for methods that take it)")
    for name in LIST_PARAMS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=number_list, dest=name, metavar="LIST",
                            help=f"longrope's {name}: comma-separated numbers or a .json list, one per rotary "
                                 "frequency" + (" (default: --long-factor)" if name == "short_factor" else ""))
    parser.add_argument("--replace", action="store_true",
                        help="discard a scaling the model already has and count from its original window")


def scaling_kwargs(args: argparse.Namespace) -> dict:
    params = {name: getattr(args, name) for name in PARAMS + LIST_PARAMS if getattr(args, name) is not None}
    return dict(original_max_position_embeddings=args.original_max_position_embeddings, replace=args.replace,
                **params)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "patch",
        help="write a RoPE-scaled copy of a checkpoint (config only, fast)",
        description="Write a copy of MODEL whose rotary embedding is scaled for a longer window. Only "
        "config.json changes (both the transformers v5 and v4 spellings); weights are hard-linked, "
        "never loaded. The result loads in stock transformers, vLLM and llama.cpp's converter.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="local checkpoint directory or Hugging Face hub id")
    add_scaling_arguments(parser)
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="output checkpoint directory")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) of MODEL")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..patching.checkpoint import patch_checkpoint, read_config
    from ..patching.info import describe

    out = patch_checkpoint(args.model, args.output, args.method, args.factor, overwrite=args.overwrite,
                           revision=args.revision, **scaling_kwargs(args))
    info = describe(read_config(out))
    record = info["ctxext"]
    if record is None:  # factor 1 writes no record: the rope is the unscaled one, in both spellings
        print(f"wrote {out}: unscaled rope (factor 1), window {info['window']:,} tokens "
              f"(max_position_embeddings {info['max_position_embeddings']:,})")
        return 0
    print(f"wrote {out}: {record['method']} x{record['factor']:g}, window "
          f"{record['original_max_position_embeddings']:,} -> {info['window']:,} tokens "
          f"(max_position_embeddings {info['max_position_embeddings']:,})")
    return 0
