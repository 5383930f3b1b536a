"""Server-rendered SVG charts for the admin profile page (no JavaScript, no CDN)."""
from __future__ import annotations

from html import escape

from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 360, 120
BAR = "#417690"  # the admin's own blue


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def histogram_svg(histogram: dict | None) -> SafeString:
    """Vertical bars, one per bin, with the range under them and counts on hover."""
    if not histogram or not histogram.get("counts"):
        return mark_safe("")
    counts, edges = histogram["counts"], histogram["edges"]
    top = max(counts) or 1
    width = WIDTH / len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = (HEIGHT - 20) * count / top
        lo, hi = edges[i], edges[min(i + 1, len(edges) - 1)]
        bars.append(f'<rect x="{i * width + 1:.1f}" y="{HEIGHT - 20 - h:.1f}" width="{max(width - 2, 1):.1f}" '
                    f'height="{h:.1f}" fill="{BAR}"><title>{escape(_fmt(lo))} – {escape(_fmt(hi))}: {count}</title></rect>')
    label = (f'<text x="0" y="{HEIGHT - 4}" font-size="11">{escape(_fmt(edges[0]))}</text>'
             f'<text x="{WIDTH}" y="{HEIGHT - 4}" font-size="11" text-anchor="end">{escape(_fmt(edges[-1]))}</text>')
    return mark_safe(f'<svg class="dataset-chart" width="{WIDTH}" height="{HEIGHT}" role="img" '
                     f'aria-label="histogram">{"".join(bars)}{label}</svg>')


def top_values_svg(top_values: dict | None) -> SafeString:
    """Horizontal bars for the most frequent values."""
    values = (top_values or {}).get("values") or []
    if not values:
        return mark_safe("")
    row, label_width, count_width = 18, 120, 70  # label | bar | count, all inside WIDTH
    most = max(n for _v, n in values) or 1
    parts = []
    for i, (value, count) in enumerate(values):
        y = i * row
        w = (WIDTH - label_width - count_width) * count / most
        text = escape(_fmt(value)[:18])
        parts.append(f'<text x="0" y="{y + 13}" font-size="11">{text}</text>'
                     f'<rect x="{label_width}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{BAR}"></rect>'
                     f'<text x="{label_width + w + 4:.1f}" y="{y + 13}" font-size="11">{count}</text>')
    return mark_safe(f'<svg class="dataset-chart" width="{WIDTH}" height="{row * len(values)}" role="img" '
                     f'aria-label="most frequent values">{"".join(parts)}</svg>')


def null_bar_svg(null_fraction: float) -> SafeString:
    w = 120
    filled = w * (null_fraction or 0)
    return mark_safe(f'<svg width="{w}" height="10" role="img" aria-label="null fraction">'
                     f'<rect width="{w}" height="10" fill="#e0e0e0"></rect>'
                     f'<rect width="{filled:.1f}" height="10" fill="#ba2121"></rect></svg>')


def progress_bar_svg(percent: int | None) -> SafeString:
    w = 100
    filled = w * (percent or 0) / 100
    return mark_safe(f'<svg width="{w}" height="10" role="img" aria-label="progress">'
                     f'<rect width="{w}" height="10" fill="#e0e0e0"></rect>'
                     f'<rect width="{filled:.1f}" height="10" fill="{BAR}"></rect></svg>')
