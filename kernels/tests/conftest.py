"""Shared set-up of the kernel tests: import path, and where Triton kernels run (GPU or CPU interpreter)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import hybridlab_kernels  # noqa: F401  (installed with the project)
except ImportError:  # a plain checkout: make kernels/hybridlab_kernels importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridlab_kernels import triton_available


def _numpy_refuses_size1_to_int() -> bool:
    try:
        int(np.array([1]))
    except TypeError:
        return True
    return False


def _fix_interpreter_index() -> None:
    """Let the Triton interpreter use tensors as loop bounds under numpy >= 2.4 (triton-lang/triton#9171).

    The interpreter keeps every scalar as a 1-element array and converts it with int(array), which numpy 2.4
    turned into a TypeError; Triton releases up to 3.6 have this. The wrapper re-registers `__index__` after
    the interpreter's own patch; the interpreter undoes its patches in reverse order, so nothing leaks.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_index_fixed", False):
        return

    def patch(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch._index_fixed = True
    interpreter._patch_lang_tensor = patch


@pytest.fixture(scope="session")
def triton_device() -> Iterator[str]:
    """Device for Triton-backend tests: 'cuda' with a GPU, else 'cpu' under TRITON_INTERPRET=1, else skip."""
    if not triton_available():
        pytest.skip("triton is not importable (pip install triton); Triton-backend tests skipped")
    if torch.cuda.is_available():
        yield "cuda"
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        from hybridlab_kernels import _attn_stats_triton  # decorated now, so as interpreted kernels
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(_attn_stats_triton._stats_kernel, InterpretedFunction):
            pytest.skip("hybridlab_kernels._attn_stats_triton was imported before TRITON_INTERPRET=1 was "
                        "set; run the kernel tests in their own process: pytest kernels/tests")
        if _numpy_refuses_size1_to_int():
            _fix_interpreter_index()
        yield "cpu"
