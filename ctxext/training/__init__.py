"""Fine-tuning, above `ctxext.evaluation`: data packing and PoSE samples (`packing`), the chunked
loss (`loss`) and the LoRA recipe and loop (`finetune`)."""
