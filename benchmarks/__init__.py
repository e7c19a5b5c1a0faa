"""Benchmarks of CmFNet Label (GitHub issue 5): `python -m benchmarks.accuracy` and `python -m benchmarks.speed`."""
