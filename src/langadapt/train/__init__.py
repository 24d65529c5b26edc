"""Continued pretraining: packed-block cache, recipes, Trainer-based training, adapters, merge."""
