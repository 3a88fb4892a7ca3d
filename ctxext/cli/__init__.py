"""The `ctxext` command line: `main` dispatches to one module per subcommand (`ctxext/cli/<name>.py`)."""

from .app import main

__all__ = ["main"]
