"""decompd: low-rank (SVD) decomposition of PyTorch Conv2d and Linear layers.

The AMCT-compatible API lives in decompd.tensor_decompose:

    from decompd.tensor_decompose import auto_decomposition, decompose_network

Calibration-aware (whitened) decomposition reads the Gram matrices of each
layer's inputs, computed here on the user's data (decompd.calibration):

    cal = decompd.calibrate(model, batches)     # cal.save("cal.safetensors")
    net, changes = auto_decomposition(model, calibration=cal, policy=...)

A latency profile times each layer and its candidate pairs on the user's
device (decompd.latency), so the budget can aim at a latency target:

    prof = decompd.profile(model, example_input)   # prof.save("p.json")
    net, changes = auto_decomposition(model, profile=prof,
                                      policy={"name": "budget",
                                              "latency_reduction": 1.3})

Safetensors checkpoints — one file, or the engine's sharded output (an
index and its shards) — load without the safetensors package:

    state = decompd.load_safetensors("out/model.safetensors.index.json")

It runs decompd's C engine (libdecomp.so) in-process through ctypes; the
engine is found through DECOMPD_LIBRARY or the system's library path (see
decompd._engine) and loaded on first use.
"""

from .errors import (CalibrationError, DecompError, DecompMemoryError,
                     DecompRuntimeError, DecompValueError,
                     EngineNotFoundError, ProfileError, SafetensorsError)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "DecompError",
    "DecompValueError",
    "DecompRuntimeError",
    "DecompMemoryError",
    "EngineNotFoundError",
    "CalibrationError",
    "ProfileError",
    "SafetensorsError",
    "auto_decomposition",
    "decompose_network",
    "calibrate",
    "Calibration",
    "profile",
    "Profile",
    "load_safetensors",
]


def __getattr__(name):
    # Lazy, so `import decompd` stays cheap and works without torch loaded.
    if name in ("auto_decomposition", "decompose_network"):
        from . import tensor_decompose
        return getattr(tensor_decompose, name)
    if name in ("calibrate", "Calibration"):
        from . import calibration
        return getattr(calibration, name)
    if name == "load_safetensors":
        from . import safetensors_io
        return safetensors_io.load_safetensors
    if name in ("profile", "Profile"):
        from . import latency
        return getattr(latency, name)
    raise AttributeError(f"module 'decompd' has no attribute {name!r}")
