"""Benchmarks of isep's speed (`isep bench`, `make bench`): the update's throughput against a plain
reference and with and without Lightning, kernels per update, and evaluation speed."""
