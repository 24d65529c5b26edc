"""Streaming corpus reading, cleaning and statistics."""
