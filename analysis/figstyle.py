"""Shared figure styling: sizes, margins, legends below the plot, y ranges that keep error bars whole.

Every chart of the report goes through `finish` so that its title and legend
fit inside the figure, in the HTML and in the PNG (which is rendered at
`PNG_WIDTH` x the figure's height).
"""

from __future__ import annotations

import math

import plotly.colors as pcolors
import plotly.graph_objects as go

PNG_WIDTH = 1100
HEIGHT = 560


def palette(n: int) -> list[str]:
    """`n` distinct colours: the qualitative D3/Plotly sets first, then samples of a continuous scale."""
    base = list(dict.fromkeys(pcolors.qualitative.Plotly + pcolors.qualitative.D3 + pcolors.qualitative.Dark24))
    if n <= len(base):
        return base[:n]
    return pcolors.sample_colorscale("Turbo", [i / max(1, n - 1) for i in range(n)])


def _bar_ends(trace) -> list[float]:
    """Every y a trace draws: its points and the ends of its error bars."""
    ys = list(trace.y) if getattr(trace, "y", None) is not None else []
    out = [y for y in ys if y is not None and not (isinstance(y, float) and math.isnan(y))]
    err = getattr(trace, "error_y", None)
    if err is not None and err.visible is not False and err.array is not None:
        plus = list(err.array)
        minus = list(err.arrayminus) if err.arrayminus is not None else plus
        for y, p, m in zip(ys, plus, minus):
            if y is None or (isinstance(y, float) and math.isnan(y)):
                continue
            if p is not None and p == p:
                out.append(y + p)
            if m is not None and m == m:
                out.append(y - m)
    return out


def y_range_with_bars(fig: go.Figure, extra: list[float] = (), pad_frac: float = 0.08) -> list[float]:
    """A y range holding every point, every whole error bar and `extra` values (e.g. a baseline band).

    Never clips a confidence interval: a bar past 0 or 100 % widens the range
    instead (the caption says why such intervals are wide).
    """
    ys = [y for tr in fig.data for y in _bar_ends(tr)] + [y for y in extra if y == y]
    if not ys:
        return [0.0, 100.0]
    lo, hi = min(ys), max(ys)
    pad = max(1.0, pad_frac * (hi - lo))
    return [lo - pad, hi + pad]


def finish(fig: go.Figure, title: str, subtitle: str | None = None, height: int = HEIGHT,
           legend_title: str | None = None, legend_rows: int = 1) -> go.Figure:
    """Title at the top left (with an optional smaller second line), legend below the plot, margins that fit."""
    top, bottom = (90 if subtitle else 70), 90 + 20 * legend_rows
    plot_h = max(100, height - top - bottom)
    fig.update_layout(
        template="plotly_white", height=height,
        title=dict(text=title, x=0.01, xanchor="left", xref="container", y=1 - 14 / height, yref="container",
                   yanchor="top", font=dict(size=16),
                   subtitle=dict(text=subtitle or "", font=dict(size=12, color="#555"))),
        legend=dict(orientation="h", x=0, xanchor="left", y=-58 / plot_h, yanchor="top", title_text=legend_title,
                    font=dict(size=11)),
        margin=dict(l=70, r=30, t=top, b=bottom),
    )
    return fig
