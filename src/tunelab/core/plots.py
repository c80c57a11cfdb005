"""The one plotting helper: a matplotlib figure drawn off screen, and its PNG bytes. Run
directories (confusion matrices, scatter plots) and reports (charts) draw through it."""

from __future__ import annotations

import io


def figure(width: float = 7.0, height: float = 3.6, columns: int = 1, rows: int = 1, **options):
    """(figure, axes) of a new off-screen figure at 100 dpi."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows == 1 and columns == 1 and not options:
        return plt.subplots(figsize=(width, height), dpi=100)
    return plt.subplots(rows, columns, figsize=(width, height), dpi=100, **options)


def png(fig) -> bytes:
    """The figure as PNG bytes, laid out tight (unless it has a layout of its own); the
    figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    if not fig.get_layout_engine():
        fig.tight_layout()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
