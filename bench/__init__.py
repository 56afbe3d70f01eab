"""Benchmark for the gateway: throughput and latency figures, not a test.

Run it from the repository root with `scripts/bench [--quick]` (or `python -m bench.run`).
See `bench/run.py` for what is measured and how.
"""
