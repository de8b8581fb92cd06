"""Dataset quality gates: near-duplicate control and benchmark decontamination.

- ``text``: the one tokenizer and normaliser every gate uses;
- ``rouge``: ROUGE-L (bit-parallel LCS) and ``RougeIndex``, the exact, pruned index of
  kept instructions;
- ``minhash``: ``MinHashIndex``, MinHash-LSH candidates (datasketch) for large runs;
- ``benchmarks``: reading user-given evaluation prompt sets;
- ``decontam``: ``Decontaminator``, exact / long n-gram / ROUGE-L overlap with them;
- ``gate``: ``QualityGate``, what the runner calls before writing a sample as accepted.
"""

from dataset.quality.gate import QualityGate, Rejection, gate_summary

__all__ = ["QualityGate", "Rejection", "gate_summary"]
