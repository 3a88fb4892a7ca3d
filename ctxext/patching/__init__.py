"""Patching, above `ctxext.rope`: a model in memory (`model`), a checkpoint on disk (`checkpoint`),
the model card every output carries (`card`) and `ctxext info`'s description of a config (`info`)."""
