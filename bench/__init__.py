"""Benchmarks (issue 6): run ``python3 bench/run.py``; see bench/README.md."""
