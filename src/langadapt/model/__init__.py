"""Models: load from anywhere (hub, local dir, GGUF, embedded alias), inspect, resize, prune."""
