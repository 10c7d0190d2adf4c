"""Benchmarks for queuectl: `make bench` (see bench/README.md)."""
