"""Data in and out of a run, and the checks on it: validity checks on candidates
(:mod:`dataset.validity`) and the answer-to-request relevance check
(:mod:`dataset.relevance`).

This package may import ``state`` only; the graph's nodes use it.
"""
