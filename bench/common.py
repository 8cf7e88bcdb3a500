"""Helpers every benchmark script shares: timing windows, ratios, sizes, markdown tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

Row = list[Any]
RENDERED = " · rendered from the raw records in bench/results/raw/ (each row names the machine it ran on)"
RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent


def read_records(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """Every record of the JSON-lines files ``paths`` (one JSON object a line; blank lines skipped), in order."""
    return [json.loads(line) for path in paths for line in open(path) if line.strip()]


def machine_label(machine: dict[str, Any], gpu: bool = True) -> str:
    """'16 cores, NVIDIA H200' from a record's machine (scale.machine()); the GPU only when ``gpu``."""
    return f"{machine['cpus']} cores" + (f", {machine['gpu']}" if gpu and machine.get("gpu") else "")


def md_table(header: Sequence[str], rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def window(fn: Callable[[], Any], min_seconds: float = 1.0) -> float:
    """Mean seconds per call of ``fn``, calling it again until >= min_seconds have passed."""
    reps, elapsed, start = 0, 0.0, time.perf_counter()
    while elapsed < min_seconds:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
    return elapsed / reps


def best_windows(calls: dict[Any, Callable[[], Any]], windows: int = 3) -> dict[Any, float]:
    """Seconds per call of each of ``calls``: warmed up once, then best of ``windows`` windows.

    The windows are interleaved (every call's first window, then every call's second...),
    so a busy moment on the machine slows one window of several systems, not one system.
    """
    for fn in calls.values():
        fn()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(windows):
        for key, fn in calls.items():
            best[key] = min(best[key], window(fn))
    return best


def seconds_per_call(fn: Callable[[], Any]) -> float:
    return best_windows({0: fn})[0]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Best of ``repeats`` calls after one warm-up call."""
    fn()
    return min(timed(fn) for _ in range(repeats))


def matmul_rate(q_tokens: int, dim: int, repeats: int = 3) -> float:
    """FLOP/s of the float32 matrix product exhaustive MaxSim runs: (q_tokens, dim) @ (dim, chunk)."""
    import numpy as np

    from retr.scoring.maxsim import CELLS

    rng = np.random.default_rng(0)
    a = rng.standard_normal((q_tokens, dim), dtype=np.float32)
    b = rng.standard_normal((dim, max(1, CELLS // q_tokens)), dtype=np.float32)
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / best_seconds(lambda: a @ b, max(repeats, 3))


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}×" if base else "–"


def portable(arg: str) -> str:
    """A command-line argument without this machine's layout: paths relative to the repository, or elided."""
    if not os.path.isabs(arg):
        return arg
    path = Path(os.path.abspath(arg))
    return os.path.relpath(path, REPO) if path.is_relative_to(REPO) else "…/" + "/".join(path.parts[-3:])


def write_results(name: str, title: str, sections: Sequence[str], load: float, details: str = "") -> Path:
    """Write bench/results/``name``.md: a header (time, machine, load at start, ``details``, the command) and the sections."""
    command = shlex.join([portable(sys.executable), *map(portable, sys.argv)])
    header = (f"# {title}\n\n{datetime.datetime.now().isoformat(timespec='seconds')} · "
              f"nproc {len(os.sched_getaffinity(0))} · {platform.platform()} · Python {platform.python_version()} · "
              f"load average at start {load:.2f}{details} · `{command}`")
    out = RESULTS / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join([header, *sections]) + "\n", encoding="utf-8")
    print(f"\nwritten to {out.relative_to(RESULTS.parent.parent)}")
    return out


def tradeoff_charts(name: str, records: Sequence[dict[str, Any]], quality: str, title: str,
                    cost: str = "bytes_per_doc") -> str:
    """Keep ``records`` as bench/results/raw/``name``.json and draw, per dataset, ``quality`` against ``cost`` and
    against queries/s (bench/results/``name``-DATASET-*.png / .svg); returns the Markdown that shows them."""
    from retr.eval.plots import tradeoff_plot

    raw = RESULTS / "raw" / f"{name}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(list(records), indent=1) + "\n")
    lines = [f"### Trade-offs (points from bench/results/raw/{name}.json; the line is the Pareto frontier)"]
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == dataset]
        for axis, is_cost in ((cost, True), ("qps", False)):
            stem = f"{name}-{dataset}-{quality.replace('@', '')}-vs-{axis}"
            label = title if is_cost else f"{quality} against queries/s"
            tradeoff_plot(mine, axis, quality, RESULTS / stem, cost=is_cost, title=f"{dataset}: {label}")
            lines.append(f"![{dataset}: {quality} against {axis}]({stem}.png)")
    return "\n\n".join(lines)
