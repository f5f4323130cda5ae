"""Software prefetch (simulate.prefetch): a hint only, so it changes no result and faults on no address."""

import numba
import numpy as np

from simulate.prefetch import prefetch


@numba.njit
def _sum_prefetching(values, flat, ahead):
    """The sum of ``flat`` (``values`` raveled), prefetching ``values`` (2-D, as the list rows) ``ahead``."""
    total = 0.0
    for i in range(flat.size):
        prefetch(values, i + ahead)  # far past either end for a large ``ahead``: an unmapped address
        total += flat[i]
    return total


def test_prefetch_changes_no_result_and_never_faults():
    values = np.random.default_rng(0).normal(size=(50, 20))
    expected = 0.0
    for v in values.ravel():
        expected += v
    for ahead in (0, 16, 10**12, -(10**12)):
        assert _sum_prefetching(values, values.ravel(), ahead) == expected
