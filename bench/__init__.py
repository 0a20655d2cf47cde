"""Benchmarks anyone can rerun; each prints the machine it ran on."""
