"""Evaluation, above `ctxext.patching`: what every evaluation shares (`common`: the models of a call,
results files, tables), passkey retrieval (`passkey`), perplexity vs length (`perplexity`) and the
plots (`plots`)."""
