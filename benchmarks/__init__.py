"""Benchmarks of CmFNet Label, measured with the product's own code (benchmarks/README.md)."""
