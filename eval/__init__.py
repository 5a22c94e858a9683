"""Retrieval benchmarks for the optimizer (vmcp eval)."""
