"""Self-contained HTML pages: one file, images embedded as PNG data URIs, inline CSS, no script.

A report must open anywhere (a browser without network, an e-mail attachment, a PACS side panel), so a
page references nothing outside itself. Text is always escaped; only this module writes markup.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from medvl3d.atomic import atomic_write_text

__all__ = ["Page", "check_output_path", "esc", "image", "table"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 1.2em 1.6em 3em; color: #1b1f24; background: #fff; line-height: 1.4; }
h1 { font-size: 1.55em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.5em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
h3 { font-size: 1.02em; margin: 1.1em 0 0.3em; }
.sub { color: #57606a; margin: 0 0 1em; }
.warn { background: #fff4e5; border: 2px solid #d9822b; border-radius: 6px; padding: 0.7em 1em;
        margin: 1em 0; }
.warn strong { color: #a4460b; }
.ok { background: #eef8f0; border: 1px solid #4c9a5b; border-radius: 6px; padding: 0.5em 1em; margin: 1em 0; }
.note { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 0.5em 1em;
        margin: 0.8em 0; color: #3d444d; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.4em 0 1.2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: 0.9em; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.88em; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; border-radius: 6px; }
details summary { cursor: pointer; color: #0969da; }
"""


def esc(value: object) -> str:
    """HTML-escaped text of any value."""
    return html.escape(str(value), quote=True)


def image(png: bytes, alt: str, caption: str | None = None, width: int | None = None) -> str:
    """A ``<figure>`` holding a PNG as a data URI (with alt text and an optional caption)."""
    data = base64.b64encode(png).decode("ascii")
    size = f' width="{int(width)}"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}"{size}>{cap}</figure>'


def table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    """A ``<table>``; cells are escaped, and columns listed in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Page:
    """An HTML page built from escaped pieces: ``page.h2("..."); page.add(image(...)); page.render()``."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.parts: list[str] = [f"<h1>{esc(title)}</h1>"]
        if subtitle:
            self.parts.append(f'<p class="sub">{esc(subtitle)}</p>')

    def add(self, markup: str) -> Page:
        """Append markup made by this module's helpers."""
        self.parts.append(markup)
        return self

    def h2(self, text: str, anchor: str | None = None) -> Page:
        ident = f' id="{esc(anchor)}"' if anchor else ""
        return self.add(f"<h2{ident}>{esc(text)}</h2>")

    def h3(self, text: str) -> Page:
        return self.add(f"<h3>{esc(text)}</h3>")

    def text(self, text: str) -> Page:
        return self.add(f"<p>{esc(text)}</p>")

    def box(self, kind: str, title: str, lines: Sequence[str] = ()) -> Page:
        """A highlighted box: ``kind`` is "warn", "ok" or "note"."""
        items = "".join(f"<li>{esc(line)}</li>" for line in lines)
        return self.add(
            f'<div class="{kind}"><strong>{esc(title)}</strong>{f"<ul>{items}</ul>" if items else ""}</div>'
        )

    def pre(self, text: str, summary: str | None = None) -> Page:
        block = f"<pre>{esc(text)}</pre>"
        return self.add(f"<details><summary>{esc(summary)}</summary>{block}</details>" if summary else block)

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(self.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page atomically (a crash never leaves half a report)."""
        path = Path(path)
        atomic_write_text(path, self.render())
        return path


def check_output_path(path: str | os.PathLike, option: str, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Check an output file before any work: not an input, not a folder, its folder creatable.

    Raises:
        ValueError: the path is one of ``inputs`` or a folder.
        OSError: its folder cannot be created (the message names it).
    """
    path = Path(path)
    target = path.resolve()
    for source in inputs:
        if target == Path(source).resolve():
            raise ValueError(f"{option} {path}: refusing to write over the input {source}")
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{option} {path}: cannot create the folder {path.parent}: {exc.strerror}") from None
    return path
