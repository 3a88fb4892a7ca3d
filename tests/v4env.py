"""transformers v4 (4.57), installed once into the ignored directory .v4/ and run in subprocesses.

Shared by the tests that need a real v4 reader (tests/patching/test_v4_reader.py) or v4's own tables
(tests/test_compat.py).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
V4 = ROOT / ".v4"
V4_PACKAGES = ["transformers==4.57.6", "huggingface_hub==0.36.0", "tokenizers==0.22.1", "regex", "requests",
               "urllib3", "idna", "certifi", "charset-normalizer"]


@pytest.fixture(scope="module")
def v4_env():
    marker = V4 / "transformers-4.57.6.dist-info"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(V4), *V4_PACKAGES],
                       check=True)
    return {**os.environ, "PYTHONPATH": str(V4), "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
