#!/usr/bin/env python
"""Summarise a py-spy ``--format raw`` profile: top functions by self and by total time.

    py-spy record --rate 250 --format raw -o prof.txt -- \\
        python benchmarks/core.py --only fanout:ephemeral:100 --runs 8
    python benchmarks/pyspy_top.py prof.txt [--top 15] [--lines] [--within consume]

Self time: samples whose innermost frame is the function. Total time: samples with the function
anywhere on the stack (counted once per sample). Percentages are of all samples, or with
``--within NAME`` of the samples whose stack holds a frame named NAME (the measured phase).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


def parse(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw:
                continue
            frames, _, count = raw.rpartition(" ")
            stacks.append((frames.split(";"), int(count)))
    return stacks


def name(frame: str, lines: bool) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"].split("site-packages/")[-1].split("src/")[-1]
    if lines and m["line"]:
        return f"{m['func']} ({file}:{m['line']})"
    return f"{m['func']} ({file})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--lines", action="store_true", help="self time by source line too")
    ap.add_argument("--within", help="only samples whose stack holds a frame named this")
    args = ap.parse_args()
    stacks = parse(args.profile)
    if args.within:
        stacks = [(s, c) for s, c in stacks if any(f.startswith(args.within) for f in s)]
    total = sum(c for _, c in stacks)
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_line: Counter[str] = Counter()
    for frames, count in stacks:
        self_t[name(frames[-1], False)] += count
        by_line[name(frames[-1], True)] += count
        for fn in {name(f, False) for f in frames}:
            incl[fn] += count
    print(f"{total} samples" + (f" within {args.within}" if args.within else ""))
    print("\nself time")
    for fn, c in self_t.most_common(args.top):
        print(f"  {100 * c / total:5.1f}%  {fn}")
    print("\ntotal time (function on the stack)")
    for fn, c in incl.most_common(args.top + 8):
        print(f"  {100 * c / total:5.1f}%  {fn}")
    if args.lines:
        print("\nself time by line")
        for fn, c in by_line.most_common(args.top):
            print(f"  {100 * c / total:5.1f}%  {fn}")


if __name__ == "__main__":
    main()
