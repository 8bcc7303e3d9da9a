#!/usr/bin/env python3
"""Draws the simulator's results as an SVG (stdlib only).

Usage: chart.py BENCH_DIR OUT.svg
Reads BENCH_DIR/sim-synthetic.json and, if present, BENCH_DIR/sim-real.json (written by
`tilewarm-sim run --write-json`), and draws two panels per trace: viewport hit rate and
foreground requests (misses the user waited for), one bar per policy. Time to complete is
in the tables; its p90 is 0 for every caching policy, so it makes a poor chart.
"""
import json
import os
import sys
from xml.sax.saxutils import escape

COLORS = {"none": "#9e9e9e", "lru": "#8d6e63", "ring1": "#fb8c00", "tilewarm": "#1e88e5",
          "oracle": "#43a047"}


def panel(x0, y0, w, h, title, policies, values, fmt, vmax):
    out = [f'<text x="{x0 + w / 2}" y="{y0 - 22}" text-anchor="middle" font-size="13">{escape(title)}</text>',
           f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#333"/>']
    n = len(policies)
    bw = w / max(n, 1)
    for i, (p, v) in enumerate(zip(policies, values)):
        bh = 0 if vmax <= 0 else h * min(v / vmax, 1.0)
        x = x0 + i * bw + bw * 0.15
        out.append(f'<rect x="{x:.1f}" y="{y0 + h - bh:.1f}" width="{bw * 0.7:.1f}" height="{bh:.1f}" '
                   f'fill="{COLORS.get(p, "#607d8b")}"><title>{escape(p)}: {fmt(v)}</title></rect>')
        out.append(f'<text x="{x + bw * 0.35:.1f}" y="{y0 + h - bh - 4:.1f}" text-anchor="middle" '
                   f'font-size="10">{escape(fmt(v))}</text>')
        out.append(f'<text x="{x + bw * 0.35:.1f}" y="{y0 + h + 14:.1f}" text-anchor="middle" '
                   f'font-size="11">{escape(p)}</text>')
    return out


def main():
    bench, out_path = sys.argv[1], sys.argv[2]
    runs = []
    for name, label in (("synthetic", "Synthetic traces"), ("real", "Real traces (ForeCache study)")):
        path = os.path.join(bench, f"sim-{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                runs.append((label, json.load(f)))
    if not runs:
        sys.exit("chart.py: no sim-*.json in " + bench)
    pw, ph, gap = 330, 170, 60
    width = 2 * pw + 3 * gap
    height = len(runs) * (ph + 90) + 60
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">'
           f'tilewarm-sim: prefetch policies</text>']
    for k, (label, r) in enumerate(runs):
        ms = r["policies"]
        pols = [m["policy"] for m in ms]
        y = 40 + k * (ph + 90) + 30
        svg.append(f'<text x="{gap}" y="{y - 4}" font-size="13" font-weight="bold">{escape(label)}</text>')
        svg += panel(gap, y + 40, pw, ph, "viewport hit rate (higher is better)", pols,
                     [m["viewport_hit_rate"] * 100 for m in ms], lambda v: f"{v:.1f}%", 100)
        # `none` dwarfs the rest; scale to the largest caching policy and let `none` clip.
        fg = [m["foreground_requests"] for m in ms]
        cached = [v for p, v in zip(pols, fg) if p != "none"] or fg
        svg += panel(2 * gap + pw, y + 40, pw, ph, "foreground requests (lower is better)", pols,
                     fg, lambda v: f"{v:.0f}", max(cached + [1]) * 1.15)
    svg.append("</svg>")
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
