"""Assemble ``index.html``: the template with its style, script, plots and data inlined.

The page's Content-Security-Policy allows only its own inline script and style (by their
sha256) and ``data:`` images: it can make no request, even if a sample's text held markup
(the script inserts text as text, never as HTML).
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dataset.stats import RunData
from dataset.viewer.data import Packed, pack, viewer_data

__all__ = ["PAGE", "page_parts", "render_page", "write_viewer"]

HERE = Path(__file__).resolve().parent
PAGE = "index.html"
PLOT_TITLES = {
    "outcomes.png": "Outcome of every candidate",
    "judge_scores.png": "Judge scores",
    "lengths.png": "Lengths and similarity to the seed",
    "words.png": "First and leading words",
}


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _figures(plots: Sequence[Path]) -> str:
    out = []
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        title = html.escape(PLOT_TITLES.get(path.name, path.stem))
        out.append(
            f'<figure><img alt="{title}" src="data:image/png;base64,{data}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    return "\n".join(out)


def _blob(name: str, data: str) -> str:
    return f'<script type="application/gzip+base64" id="blob-{name}">{data}</script>\n'


def page_parts(packed: Packed, *, title: str, plots: Sequence[Path] = ()) -> Iterator[str]:
    """The page in pieces (a page of 100,000 samples is 160 MB: it is written, not joined).

    The meta blob and the first text chunk come before the script and the other chunks
    after it, so the script shows the first page while the browser reads the rest."""
    template = (HERE / "viewer.html").read_text(encoding="utf-8")
    style = (HERE / "viewer.css").read_text(encoding="utf-8")
    script = (HERE / "viewer.js").read_text(encoding="utf-8")
    csp = (
        "default-src 'none'; "
        f"script-src 'sha256-{_sha256(script)}'; "
        f"style-src 'sha256-{_sha256(style)}'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    fills = {
        "{{TITLE}}": html.escape(title),
        "{{CSP}}": html.escape(csp, quote=True),
        "{{STYLE}}": style,
        "{{PLOTS}}": _figures(plots),
    }
    head, rest = template.split("{{DATA_FIRST}}")
    middle, tail = rest.split("{{DATA}}")
    for key, value in fills.items():
        head = head.replace(key, value)
    yield head
    yield _blob("meta", packed.meta)
    if packed.samples:
        yield _blob("s0", packed.samples[0])
    yield middle.replace("{{SCRIPT}}", script)
    for i, data in enumerate(packed.samples[1:], 1):
        yield _blob(f"s{i}", data)
    for i, data in enumerate(packed.references):
        yield _blob(f"r{i}", data)
    yield tail


def render_page(packed: Packed, *, title: str, plots: Sequence[Path] = ()) -> str:
    return "".join(page_parts(packed, title=title, plots=plots))


def write_viewer(
    run: RunData,
    out: Path,
    *,
    report: dict[str, Any] | None = None,
    plots: Sequence[str] = (),
) -> Path:
    """Write ``out/index.html`` for ``run``; ``plots``: PNG names in ``out`` to show."""
    out.mkdir(parents=True, exist_ok=True)
    packed = pack(viewer_data(run, report))
    target = out / PAGE
    tmp = target.with_name(f".{PAGE}.tmp")
    parts = page_parts(
        packed, title=f"Refed run {run.manifest.run_id}", plots=[out / p for p in plots]
    )
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(parts)
    tmp.replace(target)
    return target
