"""Score against Matryoshka dim, one line per task: a figure, an image array, a PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.ticker import FixedLocator, NullLocator


def scores_by_dim(scores: Mapping[str, float], metric: str) -> dict[int, float]:
    """`{dim: score}` of one metric from a `<metric>@<dim>`-keyed dict."""
    out = {}
    for key, value in scores.items():
        name, _, dim = key.rpartition("@")
        if name == metric:
            out[int(dim)] = value
    return dict(sorted(out.items()))


def matryoshka_figure(
    scores: Mapping[str, Mapping[int, float]],
    title: str | None = None,
    ylabel: str = "score",
) -> Figure:
    """Score against embedding dim (log2 axis), one labelled line per task.

    Built on the Agg canvas directly, not pyplot: no global figure state, safe in callbacks.
    """
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    all_dims: set[int] = set()
    for task, by_dim in scores.items():
        dims = sorted(by_dim)
        all_dims.update(dims)
        ax.plot(dims, [by_dim[d] for d in dims], marker="o", label=task)
    ax.set_xscale("log", base=2)
    if all_dims:
        ticks = sorted(all_dims)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(d) for d in ticks])
    ax.set_xlabel("embedding dim")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if scores:
        ax.legend()
    return fig


def _rendered(fig: Figure) -> FigureCanvasAgg:
    """The figure's Agg canvas, drawn unless nothing changed since its last drawing: the image
    for the loggers and the PNG come from one drawing (each took 0.1 s)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    if fig.stale:
        canvas.draw()
    return canvas


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as an HWC uint8 RGB array, the image the loggers take
    (`f2llm.loggers.log_figure`)."""
    return np.asarray(_rendered(fig).buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG (the pixels of `fig.savefig(path)`, which draws it again);
    parent folders are created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    imsave(out, np.asarray(_rendered(fig).buffer_rgba()), format="png", dpi=fig.dpi)
    return out
