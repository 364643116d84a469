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

# Codes from include/decomp/errors.h that mean "the input is wrong".
_VALUE_CODES = frozenset({
    3,   # invalid_argument
    6,   # too_large
    10, 11, 12, 13, 14, 15, 16, 17, 18,  # weight formats
    19,  # bad_shard_index
    20,  # bad_spec
    21,  # spec_mismatch
    22,  # bad_policy
    23,  # nonfinite_weights
    24,  # bad_info
    26,  # bad_calibration
    27,  # target_out_of_reach
    28,  # bad_profile
})
_NOMEM = 1


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
