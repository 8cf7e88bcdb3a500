"""Pictures of results (matplotlib, ``pip install 'retr[plot]'``), each written as PNG and SVG.

- ``delta_plot``: the per-query differences of two runs on one metric, sorted: how many queries
  one system wins, by how much, and whether a mean hides a few large swings;
- ``tradeoff_plot``: one point per index setting, a quality figure (nDCG@10, recall) against a
  cost (bytes per document, on a log axis) or a speed (queries/s), the Pareto frontier drawn through
  the settings no other beats on both.

Both return the numbers they drew, so what a picture shows can be checked against its source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from retr.errors import RetrError

SIZE = (7.0, 4.2)  # inches: 840 x 504 pixels at DPI
DPI = 120


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RetrError("plots need matplotlib: pip install 'retr[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path | str) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths


def delta_plot(a: Mapping[str, float], b: Mapping[str, float], metric: str, out: Path | str,
               labels: tuple[str, str] = ("A", "B")) -> list[tuple[str, float]]:
    """Bars of B - A per query, sorted; returns the (query id, difference) pairs in the order drawn."""
    from retr.eval.significance import paired_vectors

    qids, va, vb = paired_vectors(a, b)
    points = sorted(((q, float(y - x)) for q, x, y in zip(qids, va, vb)), key=lambda p: (-p[1], p[0]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE, layout="constrained")
    values = [d for _, d in points]
    ax.bar(range(len(values)), values, width=1.0, color=["#2a7" if d > 0 else "#c44" for d in values])
    ax.axhline(0, color="black", linewidth=0.8)
    wins, losses = sum(d > 0 for d in values), sum(d < 0 for d in values)
    ax.set_title(f"{labels[1]} − {labels[0]}: {metric} per query ({wins} better, {losses} worse, "
                 f"{len(values) - wins - losses} equal)", fontsize=10)
    ax.set_xlabel("queries, sorted by difference")
    ax.set_ylabel(f"Δ {metric}")
    ax.set_xlim(-0.5, len(values) - 0.5)
    _save(fig, out)
    plt.close(fig)
    return points


def pareto(points: Sequence[tuple[float, float]], cost: bool) -> list[int]:
    """Indices of the points on the frontier: maximal y for their x (x a cost to minimise, or a speed)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]) if cost else
                   (-points[i][0], -points[i][1]))
    frontier, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            frontier.append(i)
            best = points[i][1]
    return frontier


def tradeoff_plot(records: Sequence[Mapping[str, Any]], x: str, y: str, out: Path | str, label: str = "name",
                  cost: bool = True, title: str = "") -> dict[str, Any]:
    """Scatter of ``records`` (y against x, one labelled point each) with the Pareto frontier; returns the data."""
    rows = [r for r in records if r.get(x) is not None and r.get(y) is not None]
    if not rows:
        raise RetrError(f"no record has both {x!r} and {y!r}")
    points = [(float(r[x]), float(r[y])) for r in rows]
    names = [str(r.get(label, i)) for i, r in enumerate(rows)]
    frontier = pareto(points, cost)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE, layout="constrained")
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="#357", zorder=3)
    line = sorted((points[i] for i in frontier), key=lambda p: p[0])
    ax.plot([p[0] for p in line], [p[1] for p in line], color="#e83", linewidth=1.5, zorder=2, label="Pareto frontier")
    for (px, py), name in zip(points, names):
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if cost:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} against {x.replace('_', ' ')}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, alpha=0.3)
    paths = _save(fig, out)
    plt.close(fig)
    return {"points": list(zip(names, points)), "frontier": [names[i] for i in frontier], "files": paths}
