"""Datasets, metrics, run files and the evaluation harness."""
