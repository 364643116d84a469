"""decompd's exceptions.

Every failure the engine reports is raised as a DecompError carrying the
engine's numeric code (``.code``), its stable name (``.code_name``, the same
snake_case string the service puts in problem+json bodies) and the engine's
detailed message, which says what and where. Bad input (a malformed spec,
policy or info file, weights that do not match) is also a ValueError, memory
exhaustion a MemoryError, the rest a RuntimeError, so callers that already
catch the built-in types keep working.

CalibrationError and ProfileError are the package's own: a calibration
file (or Calibration) that is malformed or does not fit the model, a
latency profile that is malformed; each is a ValueError and its message
names the file and the layer.
"""

__all__ = [
    "DecompError",
    "DecompValueError",
    "DecompRuntimeError",
    "DecompMemoryError",
    "EngineNotFoundError",
    "CalibrationError",
    "ProfileError",
    "SafetensorsError",
    "error_class",
]

from . import _c_constants as C

# Codes from include/decomp/errors.h (through _c_constants, generated from
# it) that mean "the input is wrong".
_VALUE_CODES = frozenset({
    C.ERR_INVALID_ARGUMENT,
    C.ERR_TOO_LARGE,
    # weight formats
    C.ERR_UNKNOWN_FORMAT, C.ERR_BAD_ZIP, C.ERR_BAD_PICKLE,
    C.ERR_FORBIDDEN_GLOBAL, C.ERR_BAD_TENSOR, C.ERR_BAD_SAFETENSORS,
    C.ERR_UNSUPPORTED_DTYPE, C.ERR_TORCHSCRIPT, C.ERR_BAD_TORCHSCRIPT,
    C.ERR_BAD_SHARD_INDEX,
    # spec, policy, decomposition, info
    C.ERR_BAD_SPEC, C.ERR_SPEC_MISMATCH, C.ERR_BAD_POLICY, C.ERR_NONFINITE,
    C.ERR_BAD_INFO, C.ERR_BAD_CALIBRATION, C.ERR_OUT_OF_REACH,
    C.ERR_BAD_PROFILE,
})
_NOMEM = C.ERR_NOMEM


class DecompError(Exception):
    """A failure reported by the libdecomp engine.

    ``code`` is the engine's number (include/decomp/errors.h), ``code_name``
    its stable name ("bad_policy"), ``detail`` the engine's message.
    """

    def __init__(self, code, code_name, detail):
        self.code = code
        self.code_name = code_name
        self.detail = detail
        super().__init__(f"{detail} [{code_name}]" if detail else code_name)


class DecompValueError(DecompError, ValueError):
    """The engine rejected its input (spec, policy, weights, info file)."""


class DecompRuntimeError(DecompError, RuntimeError):
    """The engine failed for a reason other than bad input."""


class DecompMemoryError(DecompError, MemoryError):
    """The engine ran out of memory."""


class EngineNotFoundError(ImportError):
    """libdecomp.so could not be found or loaded."""


class CalibrationError(ValueError):
    """A calibration (decompd.calibrate's Gram matrices, or a file of them)
    that is malformed or does not fit the model; the message names the
    layer."""


class SafetensorsError(ValueError):
    """A safetensors file or sharded checkpoint that is malformed (header,
    dtypes, offsets, an index's weight_map or shard names); the message
    names the file and the tensor or shard."""


class ProfileError(ValueError):
    """A latency profile (decompd.profile's result, or a file of it) that is
    malformed: not JSON, a non-finite or negative time, an empty grid,
    ranks that do not increase; the message names the file and the layer.
    (Whether it fits a model is the engine's check: bad_profile.)"""


def error_class(code):
    """The exception class for engine error ``code``."""
    if code == _NOMEM:
        return DecompMemoryError
    if code in _VALUE_CODES:
        return DecompValueError
    return DecompRuntimeError
