#!/usr/bin/env python3
"""What predicting the next move could save on the real traces: a move-level model.

Issue 17 asks whether learning the user's next move (an n-gram / Markov model over pan
directions and zoom steps, as ForeCache does) can keep the viewport hit rate while
fetching far fewer items. This model answers it without the simulator's latency and TTLs:

- Each viewport of a converted ForeCache trace (sim/src/forecache.rs) is one cell of its
  study level L (a 2^L x 2^L grid over the King County homes' extent). A move is a zoom in
  (to a child cell, always inside the view), a zoom out (to the parent), a pan by one cell
  in one of 8 directions, or a jump (anything else).
- A session's cache is a set of fine cells (level 7, 128 x 128 over the county); a view is
  a hit when all its fine cells were fetched before it was shown. Items fetched count the
  homes of every fine cell fetched, once per session (nothing expires).
- After each view, a strategy names the moves whose target views it fetches.

Strategies: `none` (no prefetch), `next view` (told the next view, as the simulator's
oracle), `move type` (told only whether the next move is a
zoom-out or a pan: the parent, or all 8 neighbours), `parent + 8` (the parent view and
the 8 neighbouring views, what tilewarm's view ring and zoom-out look-ahead cover),
`parent`, `session Markov p` (a first-order model of this session's moves so far, moves
with probability >= p) and `trained Markov p` (first-order, trained on the other half's
users: tuned on one half, scored on the other).

Usage: sim/moves.py [DATA]   (DATA defaults to ../shared/data next to the repository;
converts the traces with target/release/tilewarm-sim, which `cargo build --release -p
tilewarm-sim` builds, or the binary TILEWARM_SIM names). Runs from any directory.
"""

import collections
import csv
import json
import os
import subprocess
import sys
import tempfile

# The repository (this file is sim/moves.py): paths are resolved from it, not the cwd.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The homes' extent the converter maps the study onto (forecache::KING_COUNTY).
WEST, SOUTH, EAST, NORTH = -122.52, 47.15, -121.31, 47.78
# Study level 0 is web zoom ~10.2168 at 1024 px (forecache.rs, step 4).
ZOOM_AT_LEVEL_0 = 10.216846
FINE = 7
PANS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]


def homes_per_cell(path):
    homes = collections.Counter()
    n = 2**FINE
    with open(path) as f:
        for r in csv.DictReader(f):
            lon, lat = float(r["long"]), float(r["lat"])
            i = min(int((lon - WEST) / (EAST - WEST) * n), n - 1)
            j = min(int((lat - SOUTH) / (NORTH - SOUTH) * n), n - 1)
            homes[(i, j)] += 1
    return homes


def sessions(trace):
    by = collections.defaultdict(list)
    with open(trace) as f:
        for line in f:
            r = json.loads(line)
            level = round(r["zoom"] - ZOOM_AT_LEVEL_0)
            n = 2**level
            i = round((r["west"] - WEST) / (EAST - WEST) * n)
            j = round((r["south"] - SOUTH) / (NORTH - SOUTH) * n)
            by[r["session"]].append((level, i, j))
    return list(by.values())


def fine_cells(view):
    level, i, j = view
    if level < 1 or level > FINE:  # level 0 shows no homes (run with --min-zoom 11)
        return None
    k = 2 ** (FINE - level)
    return [(a, b) for a in range(i * k, (i + 1) * k) for b in range(j * k, (j + 1) * k)]


def move(a, b):
    if b[0] > a[0]:
        return "in"
    if b[0] < a[0]:
        return "out" if b[0] == a[0] - 1 and (b[1], b[2]) == (a[1] // 2, a[2] // 2) else "jump"
    d = (b[1] - a[1], b[2] - a[2])
    return d if d in PANS else ("stay" if d == (0, 0) else "jump")


def target(view, m):
    level, i, j = view
    if isinstance(m, list):  # the next view itself (the oracle)
        return tuple(m)
    if m == "out":
        return (level - 1, i // 2, j // 2)
    if isinstance(m, tuple):
        n = 2**level
        a, b = i + m[0], j + m[1]
        if 0 <= a < n and 0 <= b < n:
            return (level, a, b)
    return None


def score(traces, homes, strategy):
    """(views scored, misses, items fetched) over the sessions of `traces`."""
    scored = misses = items = 0
    for views in traces:
        cache = set()
        moves = []
        for k, view in enumerate(views):
            if k:
                moves.append(move(views[k - 1], view))
            cells = fine_cells(view)
            if cells is not None:
                scored += 1
                misses += not all(c in cache for c in cells)
            wanted = list(cells or [])
            nxt = views[k + 1] if k + 1 < len(views) else None
            for m in strategy(moves, nxt and move(view, nxt), nxt):
                t = target(view, m)
                wanted += (t and fine_cells(t)) or []
            for c in wanted:
                if c not in cache:
                    cache.add(c)
                    items += homes[c]
    return scored, misses, items


def markov(counts, p):
    """Moves whose probability after the last move is >= p; all when the context is rare."""

    def strategy(moves, _next, _view):
        ctx = counts(moves)
        seen = ctx.get(moves[-1] if moves else None)
        if not seen or sum(seen.values()) < 5:
            return ["out"] + PANS
        total = sum(seen.values())
        return [m for m in ["out"] + PANS if seen[m] / total >= p]

    return strategy


def session_counts(moves, t=None):
    """How often each move followed each other move (added to `t` when given)."""
    t = collections.defaultdict(collections.Counter) if t is None else t
    for a, b in zip(moves, moves[1:]):
        t[a][b] += 1
    return t


def transitions(traces):
    """`session_counts` over every session of `traces`."""
    t = collections.defaultdict(collections.Counter)
    for views in traces:
        session_counts([move(a, b) for a, b in zip(views, views[1:])], t)
    return t


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data")
    fc = os.path.join(data, "forecache-ndsi2d")
    kc = os.path.join(data, "kc_house_data.csv")
    if not (os.path.isdir(fc) and os.path.isfile(kc)):
        print(f"sim/moves.py: skipped, no ForeCache traces or King County homes under {data}")
        return
    sim = os.environ.get("TILEWARM_SIM") or os.path.join(ROOT, "target", "release", "tilewarm-sim")
    if not os.access(sim, os.X_OK):
        sys.exit(f"sim/moves.py: {sim} is absent: build it with "
                 "`cargo build --release -p tilewarm-sim` (or name the binary in TILEWARM_SIM)")
    halves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, users in (("A", range(1, 6)), ("B", range(6, 11))):
            out = os.path.join(tmp, f"{name}.jsonl")
            logs = [os.path.join(fc, f"U_{u}.csv") for u in users]
            subprocess.run([sim, "convert-forecache", "--out", out, *logs], check=True,
                           stderr=subprocess.DEVNULL)
            halves[name] = sessions(out)
    homes = homes_per_cell(kc)
    rows = [
        ("none", lambda other: lambda moves, nxt, view: []),
        ("next view (oracle)", lambda other: lambda moves, nxt, view: [list(view or [])]),
        ("move type (oracle)", lambda other: lambda moves, nxt, view:
            ["out"] if nxt == "out" else (PANS if isinstance(nxt, tuple) else [])),
        ("parent + 8", lambda other: lambda moves, nxt, view: ["out"] + PANS),
        ("parent", lambda other: lambda moves, nxt, view: ["out"]),
    ]
    for p in (0.05, 0.1):
        rows.append((f"session Markov {p}", lambda other, p=p: markov(session_counts, p)))
    for p in (0.02, 0.05, 0.1):
        rows.append((f"trained Markov {p}",
                     lambda other, p=p: markov(lambda _m, t=transitions(other): t, p)))
    print("| strategy | " + " | ".join(f"half {h}: misses, items (x none)" for h in halves) + " |")
    print("|---|" + "---:|" * len(halves))
    base = {h: score(v, homes, rows[0][1](None))[2] for h, v in halves.items()}
    for name, make in rows:
        cells = []
        for h, views in halves.items():
            other = halves["B" if h == "A" else "A"]
            scored, misses, items = score(views, homes, make(other))
            cells.append(f"{misses} of {scored}, {items} ({items / base[h]:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
