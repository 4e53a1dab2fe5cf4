"""The timeline page of a stream: one day, recorded spans and gaps on a 24 h scale, click to play.

Marks come from other families through ``TIMELINE_MARKS`` (the camera family's
motion images, thinned to a few hundred a day per camera).  Server-rendered;
a few lines of plain JavaScript turn a click on the scale
into ``play.mp4?start=<that instant>`` on the page's ``<video>`` (the
progressive endpoint plays in every browser without a library).  Without
JavaScript each span is still a link to its progressive playback.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from storaged.web.page import esc, link, page

SCRIPT = """
<script>
(function () {
  var bar = document.getElementById('scale'), video = document.getElementById('player');
  var at = document.getElementById('at'), a = +bar.dataset.start, b = +bar.dataset.end;
  function play(t) {
    video.src = bar.dataset.play + '?start=' + t.toFixed(3);
    video.muted = true;
    video.play();
    at.textContent = new Date(t * 1000).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
  }
  bar.addEventListener('click', function (e) {
    var r = bar.getBoundingClientRect();
    play(a + (b - a) * (e.clientX - r.left) / r.width);
    e.preventDefault();
  });
  document.querySelectorAll('a[data-start]').forEach(function (el) {
    el.addEventListener('click', function (e) { play(+el.dataset.start); e.preventDefault(); e.stopPropagation(); });
  });
})();
</script>
"""

STYLE = """
<style>
#scale{position:relative;height:2.4em;background:#eee;border-radius:3px;cursor:pointer;margin:.5em 0 0}
#scale .span{position:absolute;top:0;bottom:0;background:#2a7;min-width:1px}
#scale .mark{position:absolute;top:0;height:40%;width:2px;background:#d50;margin-left:-1px}
.ticks{position:relative;height:1.2em;font-size:.8em;color:#666}
.ticks span{position:absolute;transform:translateX(-50%)}
</style>
"""


def _pct(t: float, a: float, b: float) -> float:
    return max(0.0, min(100.0, 100.0 * (t - a) / (b - a)))


def _clock(t: float, tz) -> str:
    return datetime.fromtimestamp(t, tz).strftime("%H:%M:%S")


def recorded_neighbours(starts: list[float], a: float, b: float, tz) -> tuple[date | None, date | None]:
    """The nearest days before [a, b) and from b on that hold a recording (None: there is none).

    The day links follow recordings, not the calendar: a crawler or a person paging through days
    meets an end instead of an endless run of empty days."""
    before = max((t for t in starts if t < a), default=None)
    after = min((t for t in starts if t >= b), default=None)
    return (None if before is None else datetime.fromtimestamp(before, tz).date(),
            None if after is None else datetime.fromtimestamp(after, tz).date())


def timeline_page(record: dict[str, Any], day: date, a: float, b: float, rec: dict[str, Any], tz,
                  marks: list[tuple[float, str, str]] = (), neighbours: tuple[date | None, date | None] = (None, None)
                  ) -> str:
    sid = int(record["id"])
    play = f"/streams/{sid}/play.mp4"
    bars = "".join(
        f'<div class="span" style="left:{_pct(s["start"], a, b):.4f}%;'
        f'width:{_pct(s["end"], a, b) - _pct(s["start"], a, b):.4f}%" '
        f'title="{esc(_clock(s["start"], tz))}–{esc(_clock(s["end"], tz))}"></div>'
        for s in rec["spans"])
    # Marks from other families (motion images): a thin line each; a click plays from that instant.
    bars += "".join(
        f'<a class="mark" href="{esc(href)}" data-start="{t:.3f}" style="left:{_pct(t, a, b):.4f}%" '
        f'title="{esc(label)} {esc(_clock(t, tz))}"></a>'
        for t, label, href in marks if a <= t <= b)
    ticks = "".join(f'<span style="left:{100 * h / 24:.3f}%">{h:02d}</span>' for h in range(0, 25, 3))
    rows = "".join(
        f'<li><a href="{esc(play)}?start={s["start"]:.3f}&amp;end={s["end"]:.3f}" data-start="{s["start"]:.3f}">'
        f'{esc(_clock(s["start"], tz))} – {esc(_clock(s["end"], tz))}</a> '
        f'<span class="muted">({s["duration"]:.0f} s, {s["segments"]} segments)</span></li>'
        for s in rec["spans"])
    gaps = "".join(f'<li>{esc(_clock(g["start"], tz))} – {esc(_clock(g["end"], tz))} '
                   f'<span class="muted">({g["duration"]:.0f} s)</span></li>' for g in rec["gaps"])
    prev_day, next_day = neighbours
    nav = ('<p>'
           + (f'{link(f"/streams/{sid}/timeline?day={prev_day.isoformat()}", "← " + prev_day.isoformat())} · '
              if prev_day else "")
           + (f'{link(f"/streams/{sid}/timeline?day={next_day.isoformat()}", next_day.isoformat() + " →")} · '
              if next_day else "")
           + f'{link(f"/streams/{sid}/status", "status")} · '
           f'{link(f"/streams/{sid}/playlist.m3u8", "live HLS playlist")}</p>')
    body = (STYLE + nav
            + f'<p class="muted">{esc(record.get("description") or record.get("url") or "")} — '
              f'{rec["recorded"]:.0f} s recorded this day ({esc(str(tz))}). Click the scale to play from there.</p>'
            + f'<div id="scale" data-start="{a:.3f}" data-end="{b:.3f}" data-play="{esc(play)}">{bars}</div>'
            + f'<div class="ticks">{ticks}</div>'
            + '<video id="player" controls muted playsinline preload="none" style="width:100%;max-height:60vh">'
              '</video><p id="at" class="muted"></p>'
            + f'<h2>Recorded</h2><ul>{rows or "<li>nothing this day</li>"}</ul>'
            + f'<h2>Gaps</h2><ul>{gaps or "<li>none</li>"}</ul>'
            + (f'<p class="muted">{len(marks)} motion image(s) marked in orange on the scale '
               f'(click one to play from that instant; its link opens the image).</p>' if marks else "")
            + SCRIPT)
    return page(f"Stream {sid} — {day.isoformat()}", body)
