"""Repository-wide pytest set-up. Without CUDA, Triton kernels can only run under its CPU interpreter, and
Triton fixes a kernel's mode when its module is first imported: so TRITON_INTERPRET is set here, before any
test module can import a kernel, whatever order the suite runs in."""

import os


def pytest_configure(config) -> None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
