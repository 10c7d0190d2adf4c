"""A small SVG line chart of the scale curve, written with the standard library.

The README shows the picture of a run; a plotting library would be a dependency of the
bench for four panels of lines, so this writes the SVG itself: one panel per figure family,
x the number of rows (one column per point of the curve), y the figure (log scale where the
values span decades), one line per series with its name at its right end.
"""

import math
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 560, 300  # one panel
LEFT, RIGHT, TOP, BOTTOM = 62, 230, 34, 40
LABEL_GAP = 12  # px between the names at the lines' right ends
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")


@dataclass
class Panel:
    title: str
    unit: str
    log: bool = True
    series: dict[str, list[float | None]] = field(default_factory=dict)


def rows_label(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1_000 and rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-9)))
    if (hi - lo) / step < 4:
        step /= 2
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 2)]


def _label(v: float) -> str:
    return f"{v:g}" if 1e-3 <= abs(v) < 1e6 or v == 0 else f"{v:.0e}"


def _panel(p: Panel, xs: list[str], ox: int, oy: int) -> list[str]:
    values = [v for vs in p.series.values() for v in vs if v is not None and (v > 0 or not p.log)]
    out = [f'<text x="{ox + WIDTH / 2}" y="{oy + 18}" text-anchor="middle" '
           f'font-weight="bold">{escape(p.title)}</text>']
    if not values:
        return out + [f'<text x="{ox + WIDTH / 2}" y="{oy + HEIGHT / 2}" '
                      'text-anchor="middle">not measured</text>']
    lo, hi = min(values), max(values)
    if p.log:
        lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        if lo == hi:
            hi = lo * 10
    else:
        lo, hi = min(0.0, lo), hi * 1.1 or 1.0
    ticks = [t for t in _ticks(lo, hi, p.log) if lo <= t <= hi * 1.0001]
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(v: float) -> float:
        f = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) if p.log \
            else (v - lo) / (hi - lo)
        return oy + TOP + h * (1 - f)

    def x(i: int) -> float:
        return ox + LEFT + (w * i / (len(xs) - 1) if len(xs) > 1 else w / 2)

    out.append(f'<rect x="{ox + LEFT}" y="{oy + TOP}" width="{w}" height="{h}" fill="none" '
               'stroke="#999"/>')
    for t in ticks:
        out.append(f'<line x1="{ox + LEFT}" x2="{ox + LEFT + w}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                   'stroke="#eee"/>')
        out.append(f'<text x="{ox + LEFT - 4}" y="{y(t) + 4:.1f}" text-anchor="end">'
                   f'{_label(t)}</text>')
    for i, label in enumerate(xs):
        out.append(f'<text x="{x(i):.1f}" y="{oy + TOP + h + 16}" text-anchor="middle">'
                   f'{escape(label)}</text>')
    out.append(f'<text x="{ox + LEFT + w / 2}" y="{oy + HEIGHT - 6}" text-anchor="middle">'
               f'rows in the queue</text>')
    out.append(f'<text x="{ox + 14}" y="{oy + TOP + h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 {ox + 14} {oy + TOP + h / 2})">{escape(p.unit)}</text>')
    labels: list[tuple[float, float, str, str]] = []  # (y, x, name, colour) of each line's end
    for n, (name, vs) in enumerate(p.series.items()):
        colour = COLOURS[n % len(COLOURS)]
        pts = [(x(i), y(v)) for i, v in enumerate(vs) if v is not None and (v > 0 or not p.log)]
        if not pts:
            continue
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in pts]
        labels.append((pts[-1][1], pts[-1][0], name, colour))
    labels.sort()
    placed: list[float] = []
    for ly, lx, name, colour in labels:  # top to bottom, each at least LABEL_GAP below the last
        ty = max(ly, placed[-1] + LABEL_GAP) if placed else ly
        placed.append(ty)
        if abs(ty - ly) > 2:  # a leader from the line's end to its name
            out.append(f'<line x1="{lx + 2:.1f}" y1="{ly:.1f}" x2="{lx + 14:.1f}" y2="{ty:.1f}" '
                       f'stroke="{colour}" stroke-width="0.7"/>')
        out.append(f'<text x="{lx + 16:.1f}" y="{ty + 4:.1f}" fill="{colour}">{escape(name)}</text>')
    return out


def chart(panels: list[Panel], rows: list[int], caption: str, columns: int = 2) -> str:
    """The SVG text: panels in a grid of `columns`, the caption (which run) underneath."""
    xs = [rows_label(r) for r in rows]
    lines = (len(panels) + columns - 1) // columns
    width, height = WIDTH * min(columns, len(panels)), HEIGHT * lines + 24
    body: list[str] = []
    for i, p in enumerate(panels):
        body += _panel(p, xs, (i % columns) * WIDTH, (i // columns) * HEIGHT)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">\n'
            f'<rect width="{width}" height="{height}" fill="white"/>\n'
            + "\n".join(body)
            + f'\n<text x="8" y="{height - 8}" fill="#555">{escape(caption)}</text>\n</svg>\n')
