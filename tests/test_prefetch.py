"""Software prefetch (simulate.prefetch): a hint only, so it changes no result and faults on no address."""

import platform

import numba
import numpy as np
import pytest

from simulate.prefetch import prefetch

# the instruction LLVM emits for llvm.prefetch (read, all levels) where we know its name
_PREFETCH_INSTRUCTION = {"x86_64": "prefetcht0", "AMD64": "prefetcht0", "aarch64": "prfm", "arm64": "prfm"}


@numba.njit
def _sum_prefetching(rows, flat, ahead):
    """The sum of ``flat``, prefetching ``rows`` (int32 rows, as the list's) ``ahead`` entries on."""
    total = 0
    for i in range(flat.size):
        prefetch(rows, i + ahead)  # far past either end for a large ``ahead``: an unmapped address
        total += flat[i]
    return total


def test_prefetch_changes_no_result_and_never_faults():
    rows = np.random.default_rng(0).integers(-1000, 1000, size=(50, 20)).astype(np.int32)
    for ahead in (0, 16, 10**12, -(10**12)):
        assert _sum_prefetching(rows, rows.ravel(), ahead) == int(rows.sum())


def test_prefetch_emits_the_prefetch_instruction():
    instruction = _PREFETCH_INSTRUCTION.get(platform.machine())
    if instruction is None:
        pytest.skip(f"no known prefetch instruction name for {platform.machine()}")
    rows = np.zeros((4, 8), dtype=np.int32)
    _sum_prefetching(rows, rows.ravel(), 0)
    assembly = "\n".join(_sum_prefetching.inspect_asm().values())
    assert instruction in assembly


def test_prefetch_refuses_arrays_that_are_not_c_contiguous():
    rows = np.zeros((4, 8), dtype=np.int32)
    with pytest.raises(numba.core.errors.TypingError):
        _sum_prefetching(rows[:, ::2], rows.ravel(), 0)
