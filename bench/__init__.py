"""Benchmarks: each module measures one thing and writes its table (the numbers in
BENCHMARKS.md); :mod:`bench.layout` measures the code's layout.

This package may import every package of Refed and the test support (``testing``);
nothing imports it.
"""
