"""Benchmarks: `python -m bench [--quick] [part ...]` (parts are listed in bench/__main__.py)."""
