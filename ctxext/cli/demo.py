"""`ctxext demo`: patch, fine-tune and evaluate the embedded tiny model, offline."""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  ctxext demo                          # ~7 minutes on 2 CPU cores; results in ./ctxext-demo/
  ctxext demo --quick --output demo    # ~2 minutes: fewer keys and fine-tune steps
  ctxext demo --output demo --overwrite

The embedded model retrieves a passkey and RULER's needles inside its 256-token window. The demo
shows it failing at 8x that window, what pi, ntk and yarn patches do without training, and how a
short LoRA fine-tune of pi and yarn (on documents of up to 4x, the answers weighted) brings
retrieval back, with each model's RULER effective length. It writes demo.json, report.md,
heatmaps, a perplexity plot, ruler/ and the fine-tuned checkpoints.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole loop on the embedded tiny model, offline (minutes on a CPU)",
        description="Patch, fine-tune and evaluate the embedded tiny model: passkey accuracy, perplexity and "
        "RULER at 1x to 8x its window for the base model, pi/ntk/yarn patches, and pi/yarn + LoRA.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", "-o", default="ctxext-demo", metavar="DIR", help="output directory (default ctxext-demo)")
    parser.add_argument("--quick", action="store_true", help="a faster, smaller run (for smoke tests)")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo.run import demo_table, run_demo, ruler_demo_table
    from .options import progress_bars

    with progress_bars(not args.quiet):  # transformers' own bars too (loading and writing weights)
        report = run_demo(args.output, quick=args.quick, overwrite=args.overwrite, progress=not args.quiet)
    print("\n" + demo_table(report))
    print("\n" + ruler_demo_table(report))
    print(f"\nwrote {args.output}/ (demo.json, report.md, plots, models/) in {report['seconds']:.0f} s")
    return 0
