"""Self-contained HTML galleries: query results and duplicate groups, with thumbnails embedded as base64 JPEG.

The file opens in any browser with no server and no network; each thumbnail also links to the full image by a
path relative to the HTML file (which works as long as the file stays beside the collection).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ._version import __version__
from .errors import ImageError
from .images import load_image

if TYPE_CHECKING:
    from .config import DuplicateRule
    from .duplicates import DuplicateGroup
    from .index import Index
    from .index_reader import IndexReader
    from .search import Hit

THUMB_SIZE = 224
THUMB_MAX_PIXELS = 100_000_000


def thumbnail_jpeg(source, size: int = THUMB_SIZE, *, quality: int = 82, max_pixels: int = THUMB_MAX_PIXELS) -> bytes:
    """A JPEG no larger than ``size`` x ``size`` (aspect kept) of an image path, bytes or PIL image.

    Raises :class:`~simsearch.errors.ImageError` when the image cannot be read.
    """
    from PIL import Image

    img = load_image(source, max_pixels=max_pixels, draft_size=size)
    img = img.copy() if img is source else img
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _data_uri(source, size: int) -> str | None:
    try:
        return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(source, size)).decode("ascii")
    except ImageError:
        return None


def _rel_link(target: Path, out_dir: Path) -> str:
    try:
        rel = os.path.relpath(Path(target).resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows
        return Path(target).resolve().as_uri()
    return quote(Path(rel).as_posix())


_CSS = """
:root { color-scheme: light dark; --card: #fff; --fg: #222; --muted: #666; --bg: #f4f4f6; --accent: #2563eb; }
@media (prefers-color-scheme: dark) { :root { --card: #1e1f24; --fg: #e8e8ea; --muted: #9a9aa2; --bg: #121316; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg);
       color: var(--fg); }
header { padding: 16px 24px 4px; } header h1 { margin: 0 0 4px; font-size: 20px; }
header p { margin: 0; color: var(--muted); }
section { padding: 12px 24px; } section h2 { font-size: 15px; margin: 8px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
.card { background: var(--card); border-radius: 8px; overflow: hidden; box-shadow: 0 1px 3px rgba(0,0,0,.15);
        display: flex; flex-direction: column; }
.card.query { outline: 3px solid var(--accent); }
.thumb { height: 170px; display: flex; align-items: center; justify-content: center; background: rgba(127,127,127,.12); }
.thumb img { max-width: 100%; max-height: 170px; display: block; }
.thumb .missing { color: var(--muted); font-size: 12px; padding: 8px; text-align: center; }
.meta { padding: 6px 8px 8px; }
.row { display: flex; justify-content: space-between; gap: 6px; }
.rank { font-weight: 600; } .score { font-variant-numeric: tabular-nums; color: var(--accent); font-weight: 600; }
.label { display: inline-block; margin-top: 2px; padding: 0 6px; border-radius: 9px; background: rgba(37,99,235,.12);
         font-size: 12px; }
.path { color: var(--muted); font-size: 11px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
footer { padding: 12px 24px 24px; color: var(--muted); font-size: 12px; }
"""


def _card(
    img_source,
    *,
    out_dir: Path,
    thumb: int,
    link: Path | None,
    rank: str = "",
    score: float | None = None,
    label: str | None = None,
    path: str = "",
    item_id: int | None = None,
    css: str = "",
) -> str:
    uri = _data_uri(img_source, thumb) if img_source is not None else None
    esc = html.escape
    img = (
        f'<img src="{uri}" alt="{esc(path)}" loading="lazy">' if uri else '<div class="missing">image unavailable</div>'
    )
    if uri and link is not None:
        img = f'<a href="{_rel_link(link, out_dir)}">{img}</a>'
    score_html = f'<span class="score">{score:.4f}</span>' if score is not None else ""
    label_html = f'<span class="label">{esc(str(label))}</span>' if label is not None else ""
    id_attr = f' data-id="{item_id}"' if item_id is not None else ""
    return (
        f'<div class="card {css}"{id_attr}><div class="thumb">{img}</div><div class="meta">'
        f'<div class="row"><span class="rank">{esc(rank)}</span>{score_html}</div>{label_html}'
        f'<div class="path" title="{esc(path)}">{esc(path)}</div></div></div>'
    )


def _why(reason: str | None, hash_distance: int | None) -> str:
    """A member's reason, e.g. 'hash · 2 bits' or 'cosine · hash 30 bits'."""
    hd = "no hash" if hash_distance is None else f"hash {hash_distance} bits"
    return f"{reason or 'chain'} · {hd}"


def _page(title: str, subtitle: str, body: str) -> str:
    esc = html.escape
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>{body}"
        f"<footer>Made by simsearch {esc(__version__)} on {esc(now)}.</footer></body></html>\n"
    )


def _write(out: str | Path, text: str) -> Path:
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


def write_query_gallery(
    out: str | Path,
    index: IndexReader,
    query: Sequence,
    hits: Sequence[Hit],
    *,
    title: str | None = None,
    thumb: int = THUMB_SIZE,
) -> Path:
    """Write the query (image paths and/or item ids) and its results (rank, score, label) as one HTML file."""
    out = Path(out).expanduser()
    out_dir = out.parent
    cards = []
    for q in query:
        if isinstance(q, int) and not isinstance(q, bool):
            it = index.item(q)
            cards.append(
                _card(it.abspath, out_dir=out_dir, thumb=thumb, link=it.abspath, rank=f"query: item {it.id}",
                      label=it.label, path=it.path, item_id=it.id, css="query")
            )  # fmt: skip
        else:
            p = Path(q).expanduser()
            cards.append(
                _card(p, out_dir=out_dir, thumb=thumb, link=p, rank="query", path=str(q), css="query")
            )  # fmt: skip
    results = [
        _card(h.abspath, out_dir=out_dir, thumb=thumb, link=Path(h.abspath), rank=f"#{h.rank}", score=h.score,
              label=h.label, path=h.path, item_id=h.id)
        for h in hits
    ]  # fmt: skip
    body = (
        f'<section><h2>Query</h2><div class="grid" id="query">{"".join(cards)}</div></section>'
        f'<section><h2>{len(hits)} nearest neighbours</h2><div class="grid" id="results">'
        f"{''.join(results) or '<p>no results</p>'}</div></section>"
    )
    m = index.manifest
    subtitle = f"index {index.path} · {m.count} items · backbone {m.backbone} · score = cosine similarity"
    return _write(out, _page(title or "simsearch: similar images", subtitle, body))


def write_duplicates_gallery(
    out: str | Path,
    index: Index,
    groups: Sequence[DuplicateGroup],
    rule: DuplicateRule | float,
    *,
    max_groups: int = 200,
    thumb: int = 160,
    title: str | None = None,
) -> Path:
    """Write groups of near-duplicates (largest first) as one HTML file; at most ``max_groups`` are shown. Each
    member shows why it is in its group: cosine to the representative, hash distance, reason."""
    out = Path(out).expanduser()
    out_dir = out.parent
    sections = []
    for n, g in enumerate(groups[:max_groups], 1):
        cards = [
            _card(it.abspath, out_dir=out_dir, thumb=thumb, link=it.abspath,
                  rank="representative" if i == 0 else _why(r, h), score=None if i == 0 else s,
                  label=it.label, path=it.path, item_id=it.id, css="query" if i == 0 else "")
            for i, (it, s, h, r) in enumerate(zip(g.items, g.scores, g.hash_distances, g.reasons, strict=True))
        ]  # fmt: skip
        wl = g.weakest
        weakest = f", weakest link: {wl.score:.4f} {_why(wl.reason, wl.hash_distance)}" if wl else ""
        sections.append(
            f'<section class="group"><h2>Group {n}: {g.size} items ({g.linkage} linkage{html.escape(weakest)})</h2>'
            f'<div class="grid">{"".join(cards)}</div></section>'
        )
    more = len(groups) - max_groups
    if more > 0:
        sections.append(f"<section><p>{more} more groups not shown (use --json or --csv for all).</p></section>")
    if not groups:
        sections.append("<section><p>No near-duplicates under this rule.</p></section>")
    n_items = sum(g.size for g in groups)
    if isinstance(rule, (int, float)):
        what = f"similarity ≥ {rule}"
    else:
        what = f"similarity ≥ {rule.threshold}"
        if rule.uses_hash:
            what += f", or hash distance ≤ {rule.hash_distance} with similarity ≥ {rule.hash_threshold}"
    subtitle = (
        f"index {index.path} · {len(groups)} groups, {n_items} items · {what} "
        f"(backbone {index.manifest.backbone}) · scores are similarities to each group's representative"
    )
    return _write(out, _page(title or "simsearch: near-duplicates", subtitle, "".join(sections)))
