"""Drawing the report's pictures: matplotlib `Figure`s on the Agg canvas as PNG bytes, each drawn once per content
and kept in the cache.

Never through pyplot: pyplot keeps global state that is unsafe when Prefect runs tasks in threads. matplotlib is
imported inside the functions that draw, so that importing a module that can draw (and the CLI that imports it)
stays fast."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from core.files import atomic_write_bytes
from core.storage import remembered_file

RENDER_VERSION = 2  # bump when a drawing changes, to redraw the remembered PNGs
DPI = 80


def remembered_png(kind: str, data: Any, draw: Callable[[], bytes]) -> bytes:
    """A PNG drawn once per content (`kind` and the JSON-able `data` it shows) and kept in the cache: a rerun served
    from the cache would otherwise spend most of its time importing matplotlib and drawing the same pictures."""
    path = remembered_file("report-png", [RENDER_VERSION, kind, data], ".png")
    if path.is_file():
        return path.read_bytes()
    png = draw()
    atomic_write_bytes(path, png)
    return png


def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    # Figures made without pyplot are not tracked globally; clearing frees them promptly.
    fig.clear()
    return buffer.getvalue()
