#!/usr/bin/env python3
"""Draws the cost/hit-rate trade-off of the tilewarm policy as an SVG (stdlib only).

Usage: pareto.py OUT.svg BASE.json SWEEP.json...
BASE.json is a `tilewarm-sim run --write-json` report with lru, ring1, tilewarm and oracle
(marked as single points); each SWEEP.json a report whose tilewarm row is one setting of
the sweep, its label `"<curve>|<setting>"` (for example `"coalesce 2|view ring 0.5"`).
Two panels: viewport hit rate against requests, and against items fetched. Each curve joins
its settings in order; the points on the Pareto front (no other point of any curve or
policy but the oracle has at least the hit rate for at most the cost) are filled.
"""
import json
import sys
from xml.sax.saxutils import escape

MARKS = {"lru": "#8d6e63", "ring1": "#fb8c00", "oracle": "#43a047"}
CURVES = ["#1e88e5", "#8e24aa", "#00897b", "#e53935"]


def load(path):
    with open(path) as f:
        return json.load(f)


def row(report, policy):
    for p in report["policies"]:
        if p["policy"] == policy:
            return p
    return None


def main():
    out, base, sweeps = sys.argv[1], load(sys.argv[2]), [load(p) for p in sys.argv[3:]]
    marks = [(k, row(base, k)) for k in ("lru", "ring1", "oracle") if row(base, k)]
    curves = {}
    for r in sweeps:
        curve, setting = r["label"].split("|", 1)
        curves.setdefault(curve, []).append((setting, row(r, "tilewarm")))
    width, height = 980, 420
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
           f'{escape(base["label"])}: hit rate against cost</text>']
    for i, (metric, title) in enumerate((("requests", "requests"), ("items_fetched", "items fetched"))):
        x0, y0, w, h = 70 + i * 480, 50, 400, 300
        # The front is among what a client can do: the oracle (which knows the future) is
        # drawn, not compared.
        pts = [(m[metric], m["viewport_hit_rate"]) for k, m in marks if k != "oracle"]
        for c in curves.values():
            pts += [(m[metric], m["viewport_hit_rate"]) for _, m in c]
        every = pts + [(m[metric], m["viewport_hit_rate"]) for _, m in marks]
        xmax = max(p[0] for p in every) * 1.08
        xmin = min(p[0] for p in every) * 0.8
        ymin = min(p[1] for p in every) - 0.01
        sx = lambda v: x0 + w * (v - xmin) / (xmax - xmin)
        sy = lambda v: y0 + h - h * (v - ymin) / (1.0 + 0.005 - ymin)

        def front(x, y):
            return not any(px <= x and py >= y and (px, py) != (x, y) for px, py in pts)

        svg.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 36}" text-anchor="middle">{title}</text>')
        svg.append(f'<text x="{x0 - 50}" y="{y0 + h / 2}" transform="rotate(-90 {x0 - 50} {y0 + h / 2})" '
                   f'text-anchor="middle">viewport hit rate</text>')
        svg.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#333"/>')
        svg.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}" stroke="#333"/>')
        for k in range(5):
            v = xmin + (xmax - xmin) * k / 4
            svg.append(f'<text x="{sx(v):.1f}" y="{y0 + h + 16}" text-anchor="middle">{v:,.0f}</text>')
            yv = ymin + (1.0 - ymin) * k / 4
            svg.append(f'<text x="{x0 - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv * 100:.1f}%</text>')
        for j, (name, c) in enumerate(curves.items()):
            color = CURVES[j % len(CURVES)]
            line = " ".join(f"{sx(m[metric]):.1f},{sy(m['viewport_hit_rate']):.1f}" for _, m in c)
            svg.append(f'<polyline points="{line}" fill="none" stroke="{color}"/>')
            for setting, m in c:
                x, y = m[metric], m["viewport_hit_rate"]
                fill = color if front(x, y) else "white"
                svg.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{fill}" stroke="{color}">'
                           f'<title>tilewarm, {escape(name)}, {escape(setting)}: {y * 100:.2f}%, '
                           f'{x:,} {title}</title></circle>')
            if i == 0:
                svg.append(f'<rect x="{x0 + w - 170}" y="{y0 + h - 60 + j * 16}" width="10" height="10" fill="{color}"/>'
                           f'<text x="{x0 + w - 154}" y="{y0 + h - 51 + j * 16}">tilewarm, {escape(name)}</text>')
        for k, m in marks:
            x, y = m[metric], m["viewport_hit_rate"]
            svg.append(f'<rect x="{sx(x) - 5:.1f}" y="{sy(y) - 5:.1f}" width="10" height="10" '
                       f'fill="{MARKS[k]}"><title>{k}: {y * 100:.2f}%, {x:,} {title}</title></rect>')
            svg.append(f'<text x="{sx(x) + 8:.1f}" y="{sy(y) + 4:.1f}">{k}</text>')
    svg.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
