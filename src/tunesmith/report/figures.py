"""Matplotlib figures rendered to PNG data URIs, so a page is one file that opens anywhere."""

from __future__ import annotations

import base64
import io
from contextlib import contextmanager


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(width: float = 7.0, height: float = 3.6):
    """Yield (figure, axes); the caller turns the figure into a data URI with `data_uri`."""
    plt = _pyplot()
    fig, axes = plt.subplots(figsize=(width, height))
    try:
        yield fig, axes
    finally:
        plt.close(fig)


def data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
