"""Data in and out of a run: seeds in (:mod:`dataset.seeds`), the checks on candidates
(:mod:`dataset.validity`, :mod:`dataset.answers`, the relevance check
:mod:`dataset.relevance`), the quality gates (:mod:`dataset.quality`), the run folder and
its ledgers (:mod:`dataset.runfolder`, :mod:`dataset.ledger`), and what a run leaves:
export, report, stats and the HTML viewer (``python -m dataset.export``,
``python -m dataset.report``).

This package may import ``state`` only; the nodes, the runner and the service use it.
"""
