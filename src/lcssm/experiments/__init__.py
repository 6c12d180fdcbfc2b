"""Experiment pipelines built from the library layers (train -> sample -> evaluate -> report)."""
