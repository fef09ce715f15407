"""Benchmarks comparing Whispr with Synapse; see bench/README.md."""
