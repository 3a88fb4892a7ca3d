"""`ctxext info`: what a checkpoint's RoPE is, and what a method would do to each dimension."""

from __future__ import annotations

import argparse
import json

from .options import number, positive_int
from ..rope.methods import METHOD_CHOICES

EXAMPLES = """\
examples:
  ctxext info meta-llama/Llama-3.1-8B
  ctxext info ./llama-yarn-x8 --json
  # which dimensions YaRN x8 keeps, interpolates or blends, as a table and a picture
  ctxext info ./my-model --method yarn --factor 8 --plot yarn-dims.png
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a checkpoint's rotary embedding and windows",
        description="Show MODEL's rotary embedding: model type, rotary dims, rope type and parameters, "
        "original and effective window. Reads config.json only. With --method and --factor, also "
        "tabulate what that scaling does to each rotary dimension.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="local checkpoint directory or Hugging Face hub id")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--method", choices=METHOD_CHOICES, metavar="METHOD", help="tabulate this method")
    parser.add_argument("--factor", type=number, help="factor for --method")
    parser.add_argument("--original-max-position-embeddings", type=positive_int, metavar="N",
                        help="the pre-training window for --method (default: what the config records)")
    parser.add_argument("--plot", metavar="FILE", help="with --method: draw the per-dimension wavelengths (PNG)")
    parser.add_argument("--revision", help="hub revision of MODEL")
    parser.set_defaults(func=run)


def _config(model: str, revision: str | None) -> dict:
    from ..patching.checkpoint import read_config
    from ..loading import check_source, is_local

    source = check_source(model)
    if is_local(source):
        from pathlib import Path

        return read_config(Path(source))
    from huggingface_hub import hf_hub_download

    from ..errors import CtxextError, first_line

    try:
        path = hf_hub_download(source, "config.json", revision=revision)
    except Exception as err:
        raise CtxextError(f"{source} is not a local directory, and fetching its config.json from the Hugging Face "
                          f"hub failed ({first_line(err)}); check the path or the model id.") from None
    from pathlib import Path

    return read_config(Path(path).parent)


def _short(value) -> str:
    """A rope parameter for the text output: longrope's per-frequency lists by length and range."""
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} values, {min(value):g} to {max(value):g}]"
    return str(value)


def run(args: argparse.Namespace) -> int:
    from ..errors import CtxextError
    from ..patching.info import describe

    if (args.method is None) != (args.factor is None):
        raise CtxextError("--method and --factor go together; give both, or neither.")
    if args.plot is not None and not args.method:
        raise CtxextError("--plot draws what a method does; give --method and --factor too.")
    if args.plot is not None:  # a new file in an existing folder, of a kind matplotlib writes, not inside the model
        from ..io import check_output_file
        from ..patching.info import PLOT_FORMATS

        check_output_file(args.plot, what="--plot", suffixes=PLOT_FORMATS, sources=[args.model])
    config = _config(args.model, args.revision)
    summary = describe(config)
    rows = None
    if args.method:
        from ..patching.info import dimension_table, plot_dimensions, scaling_for

        scaling = scaling_for(config, args.method, args.factor,
                              original_max_position_embeddings=args.original_max_position_embeddings)
        rows = dimension_table(config, scaling.method, scaling.factor,
                               original_max_position_embeddings=scaling.original_max_position_embeddings)
        if args.plot is not None:
            plot_dimensions(rows, args.plot, f"{summary['model_type']}: {scaling.method} x{scaling.factor:g}",
                            scaling.original_max_position_embeddings, scaling.window)
    if args.json:
        print(json.dumps(summary | ({"dimensions": rows} if rows is not None else {}), indent=2))
        return 0
    print(f"model type        {summary['model_type']}")
    for layer_type, layer in summary["layers"].items():
        where = "" if layer_type == "all" else f" [{layer_type}]"
        partial = (summary["rope"][layer_type] or {}).get("partial_rotary_factor", summary["partial_rotary_factor"])
        print(f"rotary dims{where}".ljust(17) + f" {layer['rotary_dim']} of head_dim {layer['head_dim']}"
              + (f" (partial_rotary_factor {partial:g})" if layer["rotary_dim"] != layer["head_dim"] else ""))
    for layer_type, params in summary["rope"].items():
        text = "none" if params is None else ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        touched = "" if layer_type in summary["scaled_layer_types"] else "  (local: a patch leaves it)"
        print(f"rope [{layer_type}]".ljust(17) + " " + text + touched)
    print("scaled layers     " + ", ".join(summary["scaled_layer_types"]))
    print(f"scaling           {summary['scaling']}")
    original = summary["original_max_position_embeddings"]
    print(f"original window   {original:,}" if original else "original window   not recorded")
    print(f"effective window  {summary['window']:,}")
    print(f"attention scale   {summary['attention_scale']['where']}")
    for note in summary["readers"]:
        print(f"warning: {note}")
    if rows is not None:
        print(f"\n{'dim':>4} {'wavelength':>12} {'rotations/L0':>13} {'new wavelength':>15} {'freq ratio':>11}  kind")
        for r in rows:
            print(f"{r['dim']:>4} {r['wavelength']:>12.1f} {r['rotations_in_window']:>13.3g} "
                  f"{r['new_wavelength']:>15.1f} {r['ratio']:>11.4f}  {r['kind']}")
        counts = {k: sum(r["kind"] == k for r in rows) for k in ("kept", "blended", "interpolated")}
        print("\n" + ", ".join(f"{v} {k}" for k, v in counts.items()))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0
