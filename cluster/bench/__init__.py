"""Benchmarks that drive real HTTP load at a paygate stack (`python -m cluster.bench.<name>`)."""
