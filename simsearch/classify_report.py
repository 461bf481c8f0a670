"""Files for people: the confusion matrix as CSV and PNG heatmap (drawn with Pillow), an HTML report of a
classification evaluation, and an HTML gallery of audit suspects beside their neighbours."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text
from .gallery import _card, _page

if TYPE_CHECKING:
    from .audit import Suspect
    from .classify_eval import ClassEvaluation
    from .index import Index

_BLUE = (np.array([247, 251, 255]), np.array([8, 48, 107]))  # the diagonal: share of the class found
_RED = (np.array([255, 255, 255]), np.array([178, 24, 43]))  # elsewhere: share of the class mistaken for another


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def confusion_png(classes: Sequence[str], confusion: np.ndarray, unknown: np.ndarray | None = None) -> bytes:
    """A heatmap of ``confusion`` (rows: true class, columns: predicted) as PNG bytes.

    Each row is divided by its class's number of queries; the diagonal is blue, mistakes red, both on a
    square-root scale so that a few mistakes still show. An ``unknown`` column is added when any was unknown.
    """
    from PIL import Image, ImageDraw

    n = len(classes)
    m = np.asarray(confusion, np.float64)
    extra = unknown is not None and np.asarray(unknown).sum() > 0
    cols = np.hstack([m, np.asarray(unknown, np.float64)[:, None]]) if extra else m
    support = cols.sum(axis=1, keepdims=True)
    share = np.sqrt(np.divide(cols, support, out=np.zeros_like(cols), where=support > 0))
    cell = int(max(6, min(32, 900 // max(n, 1))))
    font = _font(max(8, min(13, cell - 1)))
    names = [*classes, "unknown"] if extra else list(classes)
    label_w = int(max(font.getlength(s) for s in names)) + 8
    title_h = 28
    width, height = label_w + cell * cols.shape[1] + 8, title_h + label_w + cell * n + 8
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 6), "rows: true class, columns: predicted (share of the row)", fill="black", font=_font(13))
    x0, y0 = label_w, title_h + label_w
    rgb = np.zeros((n, cols.shape[1], 3), np.uint8)
    diag = np.eye(n, cols.shape[1], dtype=bool)
    for mask, (lo, hi) in ((diag, _BLUE), (~diag, _RED)):
        v = share[..., None]
        rgb[mask] = np.round(lo + (hi - lo) * v)[mask].astype(np.uint8)
    block = Image.fromarray(rgb, "RGB").resize((cell * cols.shape[1], cell * n), Image.Resampling.NEAREST)
    img.paste(block, (x0, y0))
    for r, name in enumerate(classes):  # row labels, right-aligned
        w = font.getlength(name)
        draw.text((x0 - 4 - w, y0 + r * cell + (cell - font.size) / 2 - 1), name, fill="black", font=font)
    strip = Image.new("RGB", (label_w, cell * cols.shape[1]), "white")  # column labels, drawn then turned
    sd = ImageDraw.Draw(strip)
    for c, name in enumerate(names):
        sd.text((4, c * cell + (cell - font.size) / 2 - 1), name, fill="black", font=font)
    img.paste(strip.rotate(90, expand=True), (x0, title_h))
    if cell >= 22:  # room for the counts themselves
        small = _font(max(8, cell // 3))
        for r in range(n):
            for c in range(cols.shape[1]):
                if cols[r, c]:
                    text = str(int(cols[r, c]))
                    ink = "white" if share[r, c] > 0.6 else "black"
                    w = small.getlength(text)
                    pos = (x0 + c * cell + (cell - w) / 2, y0 + r * cell + (cell - small.size) / 2 - 1)
                    draw.text(pos, text, fill=ink, font=small)
    draw.rectangle((x0 - 1, y0 - 1, x0 + cell * cols.shape[1], y0 + cell * n), outline=(120, 120, 120))
    buf = io.BytesIO()
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def confusion_csv(classes: Sequence[str], confusion: np.ndarray, unknown: np.ndarray) -> str:
    """One row per true class: its counts for each predicted class, then ``unknown``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true \\ predicted", *classes, "unknown"])
    for name, row, u in zip(classes, np.asarray(confusion), np.asarray(unknown), strict=True):
        w.writerow([name, *(int(x) for x in row), int(u)])
    return buf.getvalue()


def per_class_csv(ev: ClassEvaluation) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["class", "support", "precision", "recall", "f1"], lineterminator="\n")
    w.writeheader()
    w.writerows(ev.per_class)
    return buf.getvalue()


_TABLE_CSS = """
table { border-collapse: collapse; margin: 4px 0 12px; font-variant-numeric: tabular-nums; }
td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid rgba(127,127,127,.25); }
td:first-child, th:first-child { text-align: left; }
img.cm { max-width: 100%; height: auto; background: white; }
"""


def _rows(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(ev: ClassEvaluation, png: bytes, *, index_path: str = "") -> str:
    """The evaluation as one self-contained HTML page: figures, the confusion matrix picture, the classes."""
    summary: list[list[object]] = [
        ["protocol", ev.protocol], ["k", ev.k], ["field", ev.field], ["queries", ev.queries],
        ["classes", len(ev.classes)], ["accuracy", ev.accuracy], ["macro precision", ev.macro_precision],
        ["macro recall", ev.macro_recall], ["macro F1", ev.macro_f1],
        [f"coverage at confidence ≥ {ev.min_confidence}", ev.coverage],
        ["accuracy of those", ev.confident_accuracy],
    ]  # fmt: skip
    confusions = [[c["true"], c["predicted"], c["count"]] for c in ev.top_confusions(20)]
    worst = sorted(ev.per_class, key=lambda c: (c["f1"], c["class"]))
    per_class = [[c["class"], c["support"], c["precision"], c["recall"], c["f1"]] for c in worst]
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    body = (
        f"<style>{_TABLE_CSS}</style>"
        f"<section><h2>Figures</h2>{_rows(summary, ['', ''])}</section>"
        f'<section><h2>Confusion matrix</h2><img class="cm" src="{uri}" alt="confusion matrix"></section>'
        f"<section><h2>Most frequent confusions</h2>{_rows(confusions, ['true', 'predicted as', 'queries'])}"
        f"</section><section><h2>Per class (worst F1 first)</h2>"
        f"{_rows(per_class, ['class', 'queries', 'precision', 'recall', 'F1'])}</section>"
    )
    subtitle = f"index {index_path} · votes of the {ev.k} nearest labelled neighbours · {ev.protocol}"
    return _page("simsearch: classification by neighbour votes", subtitle, body)


def write_classification_report(out_dir: str | Path, ev: ClassEvaluation, *, index_path: str = "") -> dict[str, str]:
    """Write ``confusion.csv``, ``confusion.png``, ``per_class.csv`` and ``report.html`` into ``out_dir``."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    png = confusion_png(ev.classes, ev.confusion, ev.unknown_per_class)
    files = {
        "confusion_csv": out / "confusion.csv",
        "confusion_png": out / "confusion.png",
        "per_class_csv": out / "per_class.csv",
        "html": out / "report.html",
    }
    atomic_write_text(files["confusion_csv"], confusion_csv(ev.classes, ev.confusion, ev.unknown_per_class))
    atomic_write_bytes(files["confusion_png"], png)
    atomic_write_text(files["per_class_csv"], per_class_csv(ev))
    atomic_write_text(files["html"], report_html(ev, png, index_path=index_path))
    return {key: str(p) for key, p in files.items()}


def write_audit_gallery(
    out: str | Path, index: Index, suspects: Sequence[Suspect], *, max_items: int = 200, thumb: int = 140
) -> Path:
    """Each suspect (outlined) beside the neighbours that outvoted its label, as one HTML file."""
    out = Path(out).expanduser()
    out_dir = out.parent
    sections = []
    for n, s in enumerate(suspects[:max_items], 1):
        cards = [
            _card(s.abspath, out_dir=out_dir, thumb=thumb, link=Path(s.abspath), rank=f"item {s.id}",
                  label=s.label, path=s.path, item_id=s.id, css="query")
        ]  # fmt: skip
        neighbours = {it.id: it for it in index.items(v.id for v in s.neighbors)}
        for r, v in enumerate(s.neighbors, 1):
            it = neighbours.get(v.id)
            if it is not None:
                cards.append(
                    _card(it.abspath, out_dir=out_dir, thumb=thumb, link=it.abspath, rank=f"#{r}", score=v.score,
                          label=v.label, path=it.path, item_id=it.id)
                )  # fmt: skip
        sections.append(
            f"<section><h2>{n}. item {s.id}: labelled {html.escape(s.label)}, neighbours say "
            f"{html.escape(s.suggested)} ({s.confidence:.0%}; own label {s.own_share:.0%})</h2>"
            f'<div class="grid">{"".join(cards)}</div></section>'
        )
    if len(suspects) > max_items:
        sections.append(f"<section><p>{len(suspects) - max_items} more not shown (use --json).</p></section>")
    if not suspects:
        sections.append("<section><p>No item's label is outvoted by its neighbours at this confidence.</p></section>")
    subtitle = (
        f"index {index.path} · {len(suspects)} items whose neighbours confidently vote for another label · "
        "scores are similarities to the suspect"
    )
    atomic_write_text(out, _page("simsearch: label audit", subtitle, "".join(sections)))
    return out
