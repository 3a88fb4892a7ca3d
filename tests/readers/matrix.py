"""README's reader matrix, from the reader tests' results.

    python -m pytest tests/readers                        # runs llama.cpp and vLLM, writes the results
    python tests/readers/matrix.py                        # prints the matrix (markdown)
    python tests/readers/matrix.py --readme README.md     # and puts it into README between its markers
    python tests/readers/matrix.py RESULTS.json           # another results file

One table per reader: a row per method, a column per architecture. A cell is "ok" when the reader
derives the intended window, the same frequencies and attention scale as transformers v5, and (where
the outputs were run) the same logits or log-probabilities and greedy tokens; otherwise it names what
differs, and "(warned)" says that ctxext tells the user so (`ctxext patch`, `ctxext info`, the model
card). A difference ctxext does not warn about fails the reader tests, so it cannot appear here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ASPECTS = ("window", "frequencies", "scale", "outputs")
BEGIN, END = "<!-- readers-matrix: begin (python tests/readers/matrix.py --readme README.md) -->", \
    "<!-- readers-matrix: end -->"
DEFAULT = Path(os.environ.get("CTXEXT_READER_RESULTS",
                              Path(os.environ.get("CTXEXT_READERS_DIR", Path.home() / ".cache/ctxext/readers"))
                              / "results.json"))
METHOD_ORDER = ["pi", "ntk", "dynamic-ntk", "ntk-by-parts", "yarn", "llama3", "longrope"]
ARCH_NAMES = {"llama": "Llama", "qwen2": "Qwen2", "gemma3_text": "Gemma 3", "phi3": "Phi-3", "gpt_neox": "GPT-NeoX"}


def cell(row: dict | None) -> str:
    if row is None:
        return "refused"
    wrong = [a for a in ASPECTS if row.get(a) is False]
    text = "ok" if not wrong else ", ".join(wrong)
    if row.get("outputs") is None:
        text += "°"
    return text + (" (warned)" if row["warnings"] else "")


def render(results: dict) -> str:
    rows = results["rows"]
    out = []
    for reader in sorted({r["reader"] for r in rows}, key=lambda name: name != "llama.cpp"):
        mine = {(r["arch"], r["method"]): r for r in rows if r["reader"] == reader}
        archs = [a for a in ARCH_NAMES if any(k[0] == a for k in mine)]
        methods = [m for m in METHOD_ORDER if any(k[1] == m for k in mine)]
        out.append(f"**{reader}** ({results['versions'][reader]}): window, frequencies, attention scale, outputs")
        out.append("")
        out.append("| method | " + " | ".join(ARCH_NAMES[a] for a in archs) + " |")
        out.append("| --- |" + " --- |" * len(archs))
        for method in methods:
            out.append(f"| {method} | " + " | ".join(cell(mine.get((a, method))) for a in archs) + " |")
        out.append("")
    out.append("ok: the same window, frequencies, attention scale and outputs as transformers v5; otherwise what "
               "differs. °: rope and window only (the model was not run on this reader). (warned): ctxext says so "
               "in one sentence naming the reader and what to use instead. refused: ctxext does not write it "
               "(a longrope-only config cannot say dynamic NTK).")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT, help=f"results file (default {DEFAULT})")
    parser.add_argument("--readme", type=Path, help="replace the matrix between the markers of this README")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"error: {args.results} does not exist; run `python -m pytest tests/readers` first.", file=sys.stderr)
        return 2
    table = render(json.loads(args.results.read_text()))
    if args.readme:
        text = args.readme.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            print(f"error: {args.readme} has no matrix markers ({BEGIN} ... {END}).", file=sys.stderr)
            return 2
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        args.readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
