"""Harness shared by the tests and the benchmarks (never imported by a service)."""
