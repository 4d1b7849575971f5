"""Benchmarks (`make bench`): the serving harness, its reference servers and the in-process limits.

Not tests: nothing here asserts.
"""
