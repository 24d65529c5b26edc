"""Evaluation: text likelihood in bits per character (comparable across tokenizers), and more."""
