"""Figures for reports: the one place a matplotlib Figure is made and saved.

The object-oriented matplotlib API (Figure, not pyplot) renders with Agg and touches no
global backend state, so reports also build on headless machines and inside other programs.
"""

from __future__ import annotations

from pathlib import Path


def new_figure(width: float = 7.0, height: float = 4.5, layout: str | None = "constrained", **subplots):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    return fig, fig.subplots(**subplots)


def save_figure(fig, folder: Path, name: str) -> str:
    """Write `fig` as folder/name at 120 dpi; returns the file name (what the report links)."""
    fig.savefig(folder / name, dpi=120)
    return name
