#!/usr/bin/env python3
"""Turns divan's table (cargo bench --bench core) into markdown with same-run ratios."""
import re
import sys

UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
PAIRS = [
    ("cover_viewport", "cover_brute_force", "tile cover of a 1280x800 view at z14"),
    ("cache_get_hit", "hashmap_get", "one cached item by id"),
    ("planner_round", "read_only_round", "one viewport with 10k items cached"),
]


def parse(path):
    rows = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^[│├╰\s─]*([a-z0-9_]+)\s+([\d.]+)\s*(ns|µs|us|ms|s)\s+│\s+([\d.]+)\s*(ns|µs|us|ms|s)\s+│\s+([\d.]+)\s*(ns|µs|us|ms|s)", line)
        if m:
            rows[m.group(1)] = float(m.group(6)) * UNITS[m.group(7)]
    return rows


def human(sec):
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if sec >= f:
            return f"{sec / f:.3g} {unit}"
    return f"{sec / 1e-9:.3g} ns"


rows = parse(sys.argv[1])
print("| job | median | peer | peer median | job / peer |")
print("| --- | ---: | --- | ---: | ---: |")
for job, peer, what in PAIRS:
    if job in rows and peer in rows:
        print(f"| `{job}` ({what}) | {human(rows[job])} | `{peer}` | {human(rows[peer])} | {rows[job] / rows[peer]:.2f}x |")
others = [k for k in rows if k not in {p for pair in PAIRS for p in pair[:2]}]
for k in sorted(others):
    print(f"| `{k}` | {human(rows[k])} | | | |")
