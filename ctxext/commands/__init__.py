"""One module per `ctxext` subcommand; each exposes `register(subparsers)` (see ctxext.cli)."""
