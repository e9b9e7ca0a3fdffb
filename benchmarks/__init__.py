"""Benchmarks (make bench): python -m benchmarks.delivery, python -m benchmarks.web."""
