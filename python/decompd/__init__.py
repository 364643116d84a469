"""decompd: low-rank (spatial SVD) decomposition of PyTorch Conv2d layers.

The AMCT-compatible API lives in decompd.tensor_decompose:

    from decompd.tensor_decompose import auto_decomposition, decompose_network

It runs decompd's C engine (libdecomp.so) in-process through ctypes; the
engine is found through DECOMPD_LIBRARY or the system's library path (see
decompd._engine) and loaded on first use.
"""

from .errors import (DecompError, DecompMemoryError, DecompRuntimeError,
                     DecompValueError, EngineNotFoundError)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "DecompError",
    "DecompValueError",
    "DecompRuntimeError",
    "DecompMemoryError",
    "EngineNotFoundError",
    "auto_decomposition",
    "decompose_network",
]


def __getattr__(name):
    # Lazy, so `import decompd` stays cheap and works without torch loaded.
    if name in ("auto_decomposition", "decompose_network"):
        from . import tensor_decompose
        return getattr(tensor_decompose, name)
    raise AttributeError(f"module 'decompd' has no attribute {name!r}")
