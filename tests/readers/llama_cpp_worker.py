"""Runs inside the llama.cpp reader environment (tests/readers/setup.sh): convert, read GGUF, run it.

    python llama_cpp_worker.py JOBS.json RESULTS.json

Each job is {"kind": "convert", "model": DIR, "gguf": FILE, "name": NAME} (llama.cpp's own
convert_hf_to_gguf.py, then the GGUF's rope metadata) or {"kind": "logits", "gguf": FILE, "ids": [...],
"n_ctx": N, "out": FILE.npy} (llama-cpp-python's logits for every position). One process runs all the
jobs, so the converter and llama.cpp load once.

Two things a freshly made test checkpoint needs that a published one does not, both confined here:
the converter recognises BPE pre-tokenizers by hashing a test string against a table of published
ones, so for an unknown one this uses "gpt-2" (the byte-level regex of the tokenizers the tests train);
and its GPT-NeoX code reads hparams["rotary_pct"], which transformers 5's config.to_dict() no longer
carries (it is rope_parameters' partial_rotary_factor), so that key is put back.
"""

import json
import os
import sys
from pathlib import Path

CONVERTER = Path(os.environ["CTXEXT_LLAMA_CPP_CONVERTER"])
sys.path[:0] = [str(CONVERTER), str(CONVERTER / "gguf-py")]


def _plain(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def metadata(path: str) -> dict:
    """The GGUF's architecture, rope keys (arch prefix dropped) and rope tensors."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    fields = {name: _plain(field.contents()) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = fields["general.architecture"]
    shape = ("context_length", "attention.key_length", "embedding_length", "attention.head_count")
    rope = {k[len(arch) + 1:]: v for k, v in fields.items()
            if k.startswith(arch + ".") and ("rope" in k or k[len(arch) + 1:] in shape)}
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1).tolist() for t in reader.tensors
               if "rope" in t.name}
    return {"arch": arch, "rope": rope, "rope_tensors": tensors}


def _shim_converter() -> None:
    import conversion.base as base

    original_pre = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original_pre(self, tokenizer)
        except NotImplementedError:  # an unpublished tokenizer: its hash is in no table
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    original_hparams = base.ModelBase.load_hparams

    def load_hparams(*args, **kwargs):
        hparams = original_hparams(*args, **kwargs)
        if hparams.get("model_type") == "gpt_neox" and "rotary_pct" not in hparams:
            hparams["rotary_pct"] = (hparams.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
        return hparams

    base.ModelBase.load_hparams = staticmethod(load_hparams)


def convert(job: dict) -> dict:
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", job["model"], "--outfile", job["gguf"], "--outtype", "f32",
                "--model-name", job["name"]]
    convert_hf_to_gguf.main()
    return metadata(job["gguf"])


def logits(job: dict) -> dict:
    import numpy as np
    from llama_cpp import Llama

    ids = job["ids"]
    batch = min(job["n_ctx"], 4096)
    # llama-cpp-python passes its own YaRN betas (32, 1) unless told; these are llama.cpp's defaults too
    llm = Llama(model_path=job["gguf"], n_ctx=job["n_ctx"], n_batch=batch, n_ubatch=batch, logits_all=True,
                n_threads=2, n_threads_batch=2, seed=0, verbose=False)
    llm.eval(ids)
    np.save(job["out"], np.array(llm.scores[: len(ids)], dtype=np.float32))  # [n, vocab]
    return {"n_ctx": llm.n_ctx(), "n_ctx_train": llm._model.n_ctx_train()}


def main() -> None:
    import llama_cpp

    jobs_file, results_file = Path(sys.argv[1]), Path(sys.argv[2])  # before the converter takes sys.argv
    _shim_converter()
    jobs = json.loads(jobs_file.read_text())
    results = []
    for job in jobs:
        try:
            result = {"convert": convert, "logits": logits}[job["kind"]](job)
        except BaseException as err:  # the converter exits through SystemExit on refusal
            result = {"error": f"{type(err).__name__}: {err}"[:2000]}
        results.append(result | {"llama_cpp_python": llama_cpp.__version__})
    results_file.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
