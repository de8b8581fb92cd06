"""The HTTP service for on-demand synthesis (``python -m serve``)."""
