"""Plots of the benchmarks' results, when matplotlib is installed (it is optional)."""

from __future__ import annotations


def axes(width: float = 6, height: float = 3.5):
    """A figure and its axes, or None without matplotlib."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global figure state
    except ImportError:
        return None
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()
