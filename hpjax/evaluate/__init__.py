"""Evaluation: metrics per suite kind, a deduplicating sharded scorer, the evaluator, reports."""
