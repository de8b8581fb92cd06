"""The run viewer: ``report/index.html``, one self-contained page to browse a run's samples.

- ``data``: the run, every candidate and reference, packed into gzip+base64 JSON blobs;
- ``page``: the page itself, from ``viewer.html``, ``viewer.css`` and ``viewer.js`` (our
  own; no library) with the blobs and plots inlined and a Content-Security-Policy that
  lets it load nothing from anywhere.
"""

from dataset.viewer.page import render_page, write_viewer

__all__ = ["render_page", "write_viewer"]
