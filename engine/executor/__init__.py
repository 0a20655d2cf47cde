"""Executors run a list of stages over shards: a plain local loop, or Ray Data."""
