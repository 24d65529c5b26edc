"""Language profiles: script ranges, normalisation, counting units and sentence splitting."""
