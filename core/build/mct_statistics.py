"""MCT's statistics collection: the same figures, in less time, on every core.

For every activation it quantizes and every calibration batch, MCT 2.6 collects in numpy, on one thread: the tensor
as float64, a 2,048-bin histogram, the same histogram again "weighted" by ones (read only by the HMSE error method,
which passes Hessian weights instead), per-channel means, and per-channel minima and maxima. At 224 px those
updates, not the forward passes, are most of PTQ's time (benchmarks/end_to_end.py --real-size measures it).

`install()` replaces the collector's update, once per process, by one whose results are identical, bit for bit:
- an unweighted "weighted" histogram is the plain one's counts as float64 (numpy's bincount sums weights of 1.0
  exactly), so it is not counted twice;
- a large tensor's histogram is counted in chunks on a thread per core, each over the tensor's own range: numpy
  gives each value its bin element by element from the range alone, so the chunks' counts add up to its own;
- the per-channel means and extremes are taken beside the histogram, by MCT's own collectors, one after the other
  (each takes a transposed copy of the tensor: no more memory than MCT's own order).
numpy releases the GIL in the loops that matter. An MCT whose collector is not the one this was written against is
left as it is.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

CHUNK = 1 << 21  # values per histogram chunk: large enough that numpy's own loop dominates, small enough to share
_installed = threading.Lock()
_pool: ThreadPoolExecutor | None = None
mct_own: Any = None  # MCT's update, kept for the test that compares the two


def histogram(values: np.ndarray, bins: int, pool: ThreadPoolExecutor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`np.histogram(values, bins=bins)`, counted in chunks on `pool` when the tensor is large."""
    flat = values.reshape(-1)
    if pool is None or flat.size <= 2 * CHUNK:
        return np.histogram(flat, bins=bins)
    low, high = flat.min(), flat.max()  # the range numpy would find
    if not (np.isfinite(low) and np.isfinite(high)):
        return np.histogram(flat, bins=bins)  # numpy's own error
    chunks = [flat[i : i + CHUNK] for i in range(0, flat.size, CHUNK)]
    counts = sum(pool.map(lambda chunk: np.histogram(chunk, bins=bins, range=(low, high))[0], chunks))
    return np.asarray(counts), np.histogram_bin_edges(flat[:1], bins=bins, range=(low, high))


def supported(collector_class: type) -> bool:
    """Whether MCT's StatsCollector is the one `update_statistics` below reproduces."""
    import model_compression_toolkit as mct

    probe = collector_class(out_channel_axis=-1)
    return mct.__version__.startswith("2.6.") and all(
        hasattr(probe, name) for name in ("hc", "weighted_hc", "mc", "mpcc")
    )


def update_statistics(self: Any, x: Any, weights: Any = None) -> None:
    """MCT's StatsCollector.update_statistics with the same results (see the module's docstring)."""
    from model_compression_toolkit.core.common.collectors.statistics_collector import standardize_tensor

    assert _pool is not None
    x = standardize_tensor(x)
    counting = _pool.submit(histogram, x, self.hc._n_bins, _pool)
    # Beside the histogram, one after the other as MCT does: each takes a transposed copy of the tensor.
    self.mc.update(x)
    self.mpcc.update(x)
    counts, edges = counting.result()
    self.hc._histogram_per_iteration.append((counts, edges))
    if weights is None:
        self.weighted_hc._histogram_per_iteration.append((counts.astype(np.float64), edges.copy()))
    else:
        self.weighted_hc.update(x, weights)


def install() -> bool:
    """Make this process's MCT collect statistics as above; True when it does (idempotent)."""
    global _pool, mct_own
    from model_compression_toolkit.core.common.collectors.statistics_collector import StatsCollector

    with _installed:
        if StatsCollector.update_statistics is update_statistics:
            return True
        if not supported(StatsCollector):
            return False
        # One thread per core counts chunks; one more waits for them (the histogram's own, beside the reductions).
        _pool = ThreadPoolExecutor(max_workers=(os.cpu_count() or 1) + 1, thread_name_prefix="mct-statistics")
        mct_own = StatsCollector.update_statistics
        StatsCollector.update_statistics = update_statistics  # type: ignore[method-assign]
        return True
