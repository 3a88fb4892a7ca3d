"""Fine-tuning, above `ctxext.evaluation`: the recipe, every training default (`recipe`); data packing
and PoSE samples (`packing`); the model stage: loading, patch, LoRA (`model`); the chunked loss
(`loss`); the loop and its seeded random state (`loop`); run.json, checkpoints and the step log
(`resume`); merge and output (`save`); and `finetune`, which runs the stages."""
