"""The frame every HTML page shares: one stylesheet, one navigation bar, escaping helpers.

Pages are rendered on the server and read without JavaScript.  Everything that
came from a user (file names, descriptions, URLs, JSON values) goes through
``esc`` (text and attributes) or ``seg`` (a path segment of a link) before it
reaches the page.  The layout is one column that works at phone width:
headings and cells break long words (hex ids, URLs) instead of running off the
page, and wide tables scroll inside their own box.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from urllib.parse import quote

from storaged.config import human_size as config_human_size

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:0 1em 2em;max-width:72em;line-height:1.4;color:#222}
nav{display:flex;flex-wrap:wrap;gap:.3em 1.2em;padding:.6em 0;border-bottom:1px solid #ddd;margin-bottom:.5em}
nav a{text-decoration:none;font-weight:600}
h1,h2,h3,code,.id{overflow-wrap:anywhere}
p,li,td,th,dd,dt{overflow-wrap:break-word}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.6em}h3{font-size:1.05em}
a{color:#0650b5}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
img.thumb{width:96px;max-width:28vw;height:auto;border-radius:3px;display:block}
.gallery{display:flex;flex-wrap:wrap;gap:6px}.gallery img{width:120px;max-width:30vw;height:auto}
video,img.full{max-width:100%;height:auto}
progress{width:10em;max-width:40vw}
.muted{color:#666}.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}
code,pre{background:#f3f3f3;border-radius:3px;padding:0 3px}pre{padding:.5em;overflow-x:auto;white-space:pre-wrap}
@media (max-width:640px){
 body{padding:0 .6em 2em}
 table,tbody,tr,td{display:block;width:100%}
 tr.head{display:none}
 tr{padding:.4em 0;border-bottom:1px solid #ddd}
 td{border:0;padding:1px 0}
 td.n{text-align:left;white-space:normal}
 td:empty{display:none}
 td[data-label]::before{content:attr(data-label) ": ";color:#666}
 img.thumb{float:right;margin-left:.5em}
}
"""

NAV = (("/", "Home"), ("/library/", "Library"), ("/data/", "Data tree"), ("/shared/", "Shared"), ("/docs", "API"))


def esc(value: object) -> str:
    """Text or attribute value, escaped (quotes too)."""
    return html.escape("" if value is None else str(value), quote=True)


def seg(name: object) -> str:
    """One path segment from user data (a file name), percent-encoded for a URL."""
    return quote(str(name), safe="")


def link(url: str, text: object) -> str:
    """``<a>`` to ``url`` (built with ``seg`` for user parts), with ``text`` escaped."""
    return f'<a href="{esc(url)}">{esc(text)}</a>'


def page(title: str, body: str, *, heading: str | None = None) -> str:
    """A whole HTML document: ``title`` and ``heading`` are text (escaped here), ``body`` is HTML."""
    nav = " ".join(f'<a href="{p}">{esc(t)}</a>' for p, t in NAV)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)}</title><style>{STYLE}</style></head>'
            f'<body><nav>{nav}</nav><h1>{esc(heading if heading is not None else title)}</h1>\n{body}\n</body></html>\n')


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """A table; ``headers`` are text, each row's cells are HTML; columns in ``numeric`` align right."""
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    # On a phone each row becomes a card and each cell says what it is (data-label).
    labels = [f' data-label="{esc(h)}"' if h else "" for h in headers]
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}{labels[i]}>{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr class="head">{head}</tr>{body}</table></div>'


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def human_size(n: int | None) -> str:
    """Bytes in binary units for a page; empty for an unknown size."""
    return "" if n is None else config_human_size(n)


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def human_time(value: float | str | None, tz=timezone.utc) -> str:
    """POSIX seconds or an ISO string as ``YYYY-MM-DD HH:MM:SS`` in ``tz``."""
    if value is None or value == "":
        return ""
    try:
        when = (datetime.fromtimestamp(value, tz) if isinstance(value, (int, float))
                else datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(tz))
    except (ValueError, OverflowError, OSError):
        return str(value)
    return when.strftime("%Y-%m-%d %H:%M:%S")
