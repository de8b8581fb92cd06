"""The LLM judge: scoring a record on a criteria set and comparing two responses
(:mod:`judge.scoring`, used by the graph's judging nodes), human-judgement sets
(:mod:`judge.sets`), the judge's agreement with people (:mod:`judge.evaluate`,
:mod:`judge.report`), HEAP-style training records from those sets (:mod:`judge.export`)
and its command (:mod:`judge.cli`, ``python -m judge``).

This package may import ``llm``, ``prompts`` and ``state``; ``nodes`` and ``metric`` use it.
"""
