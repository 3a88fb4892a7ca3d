"""The demo, above everything but the CLI: the embedded model (`assets/demo_model`), its synthetic
data (`synthetic`) and the whole loop on it (`run`)."""
