"""What the benchmark scripts share: their flags, medians, machine facts, report and JSON.

Each script in benchmarks/ measures something of its own and keeps its own cases, rows and
targets; this module holds the rest, so that every script takes the same flags (``--quick``,
``--json``, ``--runs``, ``--only``), takes medians the same way, prints the same two tables
(figures, then targets) and writes the same JSON envelope. Scripts import it as ``_common``
(they run as ``python benchmarks/<name>.py``, so benchmarks/ is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import uvloop

import fleetchat

# A target: (key in the figures, "section.field"; op, one of ">=", "<=", "<"; bound; label).
Target = tuple[str, str, float, str]
Row = tuple[str, str, str]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    "<=": lambda value, bound: value <= bound,
    "<": lambda value, bound: value < bound,
}


def log(msg: str) -> None:
    """Progress and warnings go to stderr, so that stdout can carry the JSON."""
    print(msg, file=sys.stderr, flush=True)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def fmt(v: float) -> str:
    """A figure with about three significant digits, thousands separated."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:,.1f}"
    return f"{v:,.3g}"


# -- flags -------------------------------------------------------------------------------------


def parser(
    doc: str | None,
    *,
    quick: str | None = "smaller runs; under 60 s in all",
    only: str | None = None,
    only_choices: Iterable[str] | None = None,
    json_flag: bool = True,
    runs: bool = True,
) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark shares; the script adds its own.

    Args:
        doc: the script's docstring; its first paragraph is the description.
        quick: help of ``--quick`` (how long the short run takes), or None for no ``--quick``.
        only: help of ``--only`` (repeatable), or None for no ``--only``.
        only_choices: the values ``--only`` accepts; None: any (the script matches them).
        json_flag: whether there is ``--json`` (one JSON object on stdout).
        runs: whether there is ``--runs`` (default 3; the median is kept).
    """
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    if runs:
        p.add_argument("--runs", type=int, default=3, help="runs per figure; the median is kept")
    if only is not None:
        choices = sorted(only_choices) if only_choices is not None else None
        p.add_argument("--only", action="append", choices=choices, help=only)
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """``p.parse_args()``, with ``--runs`` checked."""
    args = p.parse_args()
    if getattr(args, "runs", 1) < 1:
        p.error("--runs must be at least 1")
    return args


def wanted(only: list[str] | None, key: str) -> bool:
    """Whether ``--only`` asks for ``key``: all when absent, else ``key`` or a prefix of it
    up to a colon (``fanout`` selects ``fanout:ephemeral:100``)."""
    return not only or any(key == o or key.startswith(o + ":") for o in only)


# -- medians -----------------------------------------------------------------------------------


def runs_of(runs: int, fn: Callable[[int], dict[str, Any]], *, show: bool = False) -> list[Any]:
    """``fn(0)`` .. ``fn(runs - 1)``; with ``show``, each run's numbers logged as it ends."""
    results = []
    for i in range(runs):
        r = fn(i)
        if show:
            numbers = ", ".join(f"{k}={fmt(v)}" for k, v in r.items() if is_number(v))
            log(f"  run {i + 1}: {numbers}")
        results.append(r)
    return results


def median_figures(results: list[dict[str, Any]], *, worst: Iterable[str] = ()) -> dict[str, Any]:
    """The median over runs of every numeric figure of the first run.

    NaN stands for "not seen within the run" (a message that never arrived): it counts as the
    longest, and a median that is one is None. The figures named in ``worst`` (shares that
    every run must reach, such as ``once``) take the smallest value instead of the median.
    """
    out: dict[str, Any] = {}
    for k in results[0]:
        vals = [r[k] if r[k] == r[k] else math.inf for r in results if is_number(r.get(k))]
        if vals:
            m = statistics.median_low(vals) if math.inf in vals else statistics.median(vals)
            out[k] = None if m == math.inf else m
    for k in worst:
        out[k] = min(r[k] for r in results)
    return out


def warn_shares(message: str, shares: Mapping[str, float]) -> None:
    """Log ``message`` and the CPU shares, if any, e.g. those where other processes took the
    CPU (the figures are disturbed)."""
    if shares:
        log(message + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))


# -- the machine -------------------------------------------------------------------------------


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, or "" where /proc has none."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""


def git() -> str:
    """The commit measured, with ``+dirty`` when src/ differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, versions, load average and commit."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "uvloop": uvloop.__version__,
        "fleetchat": fleetchat.__version__,
        "loadavg": loadavg(),
        "git": git(),
    }


# -- targets and the report --------------------------------------------------------------------


def targets_met(
    figures: dict[str, Any],
    targets: list[Target],
    *,
    ratio: bool = False,
    skip: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Each target checked against ``figures``; targets whose figure was not measured (or is
    named in ``skip``) are left out. With ``ratio``, each result also has ``value / bound``,
    which the report shows for a missed target."""
    out = []
    for key, op, bound, label in targets:
        section, _, field = key.rpartition(".")
        value = figures.get(section, {}).get(field)
        if not is_number(value) or key in skip:
            continue
        value = float(value)
        met = {"target": label, "key": key, "value": value, "op": op, "bound": bound}
        met["met"] = _OPS[op](value, bound)
        if ratio:
            met["ratio"] = value / bound
        out.append(met)
    return out


def console(to_stderr: bool, width: int | None = None) -> Any:
    """A rich console on stdout, or on stderr when stdout carries the JSON."""
    from rich.console import Console

    return Console(file=sys.stderr if to_stderr else sys.stdout, width=width)


def print_report(
    title: str,
    rows: list[Row],
    targets: list[dict[str, Any]],
    *,
    to_stderr: bool,
    width: int = 120,
    targets_title: str = "targets (from the issue)",
    pending: Iterable[str] = (),
) -> None:
    """The figures table (benchmark, figure, also) and the targets table (target, measured,
    bound, result); ``pending`` names targets that could not be measured."""
    from rich.table import Table

    out = console(to_stderr, width)
    table = Table(title=title)
    for col in ("benchmark", "figure", "also"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    out.print(table)
    tt = Table(title=targets_title)
    for col in ("target", "measured", "bound", "result"):
        tt.add_column(col)
    for t in targets:
        miss = f"[red]MISS[/] ({t['ratio']:.2f}x of bound)" if "ratio" in t else "[red]MISS[/]"
        tt.add_row(
            t["target"],
            fmt(t["value"]),
            f"{t['op']} {fmt(t['bound'])}",
            "[green]PASS[/]" if t["met"] else miss,
        )
    for label in pending:
        tt.add_row(label, "pending SDK", "", "")
    out.print(tt)


def write_json(obj: Any, *, indent: int | None = 2) -> None:
    """``obj`` as one JSON object (one line without ``indent``) on stdout."""
    sys.stdout.write(json.dumps(obj, indent=indent) + "\n")


class Session:
    """One run of a benchmark script: its flags, wall time and load average from the start.

    Created once the flags are parsed; ``finish`` logs the time taken and, with ``--json``,
    writes the JSON envelope: machine, mode, runs, the script's own fields, seconds, figures
    and targets.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.load_before = loadavg()

    @property
    def mode(self) -> str:
        return "quick" if getattr(self.args, "quick", False) else "full"

    def title(self, what: str, code: str | None = None) -> str:
        """``fleetchat <what> benchmarks (<mode>, median of <runs>, <commit>)``."""
        code = (code if code is not None else git()) or "?"
        return f"fleetchat {what} benchmarks ({self.mode}, median of {self.args.runs}, {code})"

    def finish(
        self,
        figures: dict[str, Any],
        targets: list[dict[str, Any]],
        *,
        head: Mapping[str, Any] | None = None,
        fields: Mapping[str, Any] | None = None,
        load_before: bool = True,
        cpu_share: Mapping[str, float] | None = None,
    ) -> None:
        """Log the time taken; with ``--json``, write the envelope. ``head`` goes right after
        ``machine``, ``fields`` after ``runs``; ``load_before`` and ``cpu_share`` are kept
        only by the scripts that record them."""
        wall = time.perf_counter() - self.started
        log(f"done in {wall:.1f} s; load average before {self.load_before}, after {loadavg()}")
        if not self.args.json:
            return
        out: dict[str, Any] = {"machine": machine(), **(head or {})}
        out |= {"mode": self.mode, "runs": self.args.runs, **(fields or {}), "seconds": wall}
        if load_before:
            out["load_before"] = self.load_before
        out["figures"] = figures
        if cpu_share is not None:
            out["cpu_share"] = cpu_share
        out["targets"] = targets
        write_json(out)


def sections_main(
    p: argparse.ArgumentParser,
    sections: Mapping[str, Callable[[argparse.Namespace, dict[str, Any]], None]],
    targets: list[Target],
    rows: Callable[[dict[str, Any]], list[Row]],
    *,
    what: str,
    width: int,
    fields: Iterable[str] = (),
) -> None:
    """The whole run of a script made of sections (tasks.py, workflows.py): parse the flags,
    run every section that ``--only`` selects (in order, each adding its figures), print the
    report and, with ``--json``, write it with the flags named in ``fields``."""
    args = parse(p)
    session = Session(args)
    figures: dict[str, Any] = {}
    for name, section in sections.items():
        if wanted(args.only, name):
            section(args, figures)
    met = targets_met(figures, targets)
    print_report(session.title(what), rows(figures), met, to_stderr=args.json, width=width)
    session.finish(figures, met, fields={f: getattr(args, f) for f in fields}, load_before=False)
