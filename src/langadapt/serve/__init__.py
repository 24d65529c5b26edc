"""Serving a model: `langadapt chat`."""
