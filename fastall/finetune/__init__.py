"""Stage 3b, fine-tuning: the stage after the cut and the head, trained from the cached maps at the cut
(`fastall finetune`), on the folds, splits, probe baseline, metrics and report of train-head.

Owns: the configuration and presets (``config``), the engine (``engine``: stage + pool + the one Head, AdamW),
the end-to-end source of maps (``pixels``) and the run (``run``). Sits above features and training.
"""
