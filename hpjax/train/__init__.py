"""Finetuning CLIP with hard negatives and hard positives: loss, optimizer, step, checkpoints, loop."""
