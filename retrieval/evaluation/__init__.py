"""Evaluation: ranking metrics and the relevance protocols of the benchmarks."""
