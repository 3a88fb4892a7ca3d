"""`python -m ctxext.cli ...` (what `accelerate launch -m ctxext.cli train ...` runs)."""

import sys

from .app import main

sys.exit(main())
