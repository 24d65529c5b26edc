"""Tokenizers: load, measure, train, merge (extend) and prune."""
