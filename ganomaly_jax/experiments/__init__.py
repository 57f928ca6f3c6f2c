"""Experiments: sweeps, benchmark suites and their tables, baselines, post-hoc rescoring."""
