"""Benchmarks: retrieval metrics, dataset folders, accuracy / parity / throughput / search suites (``tki-bench``)."""
