"""`ctxext patch`: write a RoPE-scaled copy of a checkpoint (config only, weights hard-linked)."""

from __future__ import annotations

import argparse

from .options import number, positive_int
from ..rope.methods import METHOD_CHOICES, METHOD_PARAMETERS, METHODS

EXAMPLES = """\
examples:
  # YaRN, 8x the model's window, from the hub
  ctxext patch meta-llama/Llama-2-7b-hf --method yarn --factor 8 --output llama2-yarn-x8

  # Position Interpolation on a local checkpoint, replacing an existing output
  ctxext patch ./my-model --method pi --factor 4 --output my-model-pi-x4 --overwrite

  # a model that already carries scaling (Llama 3.1's llama3): start again from its original window
  ctxext patch meta-llama/Llama-3.1-8B --method yarn --factor 32 --replace --output llama31-yarn-x32

methods:
""" + "\n".join(f"  {m.name:<13} {m.summary}" for m in METHODS.values())

#: method parameters that get a command-line option (HF spelling, dashes on the command line): the registry's
PARAMS = METHOD_PARAMETERS


def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    """--method, --factor and the method parameters, shared by every command that scales a model."""
    parser.add_argument("--method", required=True, choices=METHOD_CHOICES, metavar="METHOD",
                        help=f"scaling method: {', '.join(METHOD_CHOICES)}")
    parser.add_argument("--factor", required=True, type=number, help="new window / original window (>= 1)")
    parser.add_argument("--original-max-position-embeddings", type=positive_int, metavar="N",
                        help="the pre-training window (default: what the config records)")
    for name in PARAMS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=number, dest=name, metavar="X",
                            help=f"{name} (only for methods that take it)")
    parser.add_argument("--replace", action="store_true",
                        help="discard a scaling the model already has and count from its original window")


def scaling_kwargs(args: argparse.Namespace) -> dict:
    params = {name: getattr(args, name) for name in PARAMS if getattr(args, name) is not None}
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
