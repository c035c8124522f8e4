"""Benchmarks and the load generator: they print figures and assert nothing."""
