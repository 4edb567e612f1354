"""A small builder for self-contained HTML reports.

Everything is inline: CSS in a <style> block, figures as base64 PNG data URIs,
no scripts or fonts from elsewhere, so the file opens offline and can be
mailed as one attachment. A tiny inline script counts the images that loaded
and writes the count into ``<body data-images-loaded=...>`` (used by tests
that render the page in headless Chromium).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usnav.io.atomic import atomic_path

__all__ = ["Report"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{border-bottom:2px solid #2a6f97;padding-bottom:.3em}
h2{color:#2a6f97;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0 1.2em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#eef4f8}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555;max-width:520px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
.meta{color:#666;font-size:.9em}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""


def figure_to_png(fig: Any, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure (closes it)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class Report:
    """Collects sections and renders one self-contained HTML page.

    >>> r = Report("Pipeline report")
    >>> r.heading("Timings"); r.table(["stage", "s"], [["compound", 1.2]])
    >>> r.write("out/report.html")
    """

    title: str
    subtitle: str = ""
    _parts: list[str] = field(default_factory=list)
    n_images: int = 0

    def heading(self, text: str) -> None:
        self._parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> None:
        def cell(v: Any) -> str:
            if v is None:
                return "&ndash;"
            if isinstance(v, float):
                return f"{v:.{digits}f}"
            return html.escape(str(v))

        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, png: bytes, caption: str = "", width_px: int | None = None) -> None:
        """Embed PNG bytes (or a matplotlib figure) with a caption."""
        if not isinstance(png, bytes | bytearray):
            png = figure_to_png(png)
        if png[:8] != b"\x89PNG\r\n\x1a\n":
            raise ValueError("image() expects PNG bytes or a matplotlib figure")
        data = base64.b64encode(png).decode("ascii")
        style = f' style="width:{width_px}px"' if width_px else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        alt = html.escape(caption or f"figure {self.n_images + 1}")
        self._parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"{style}>{cap}</figure>')
        self.n_images += 1

    def render(self) -> str:
        sub = f'<p class="meta">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
            f"<script>{_SCRIPT}</script></head>\n<body>\n<h1>{html.escape(self.title)}</h1>{sub}\n"
            + "\n".join(self._parts)
            + "\n</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        """Write the page atomically; returns its path."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.render(), encoding="utf-8")
        return path
