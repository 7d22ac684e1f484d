"""Benchmarks: `python -m benchmarks` (or `make bench`). Figures are ratios against a baseline
measured in the same run, because absolute times on a shared 2-core machine mean little."""
