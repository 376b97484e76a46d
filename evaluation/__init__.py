"""Offline evaluation: loaders, deterministic splits, metrics, baselines and reports."""
