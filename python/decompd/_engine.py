"""The ctypes binding to libdecomp, the engine every path of decompd shares.

This file owns finding and loading libdecomp.so, declaring the C prototypes of
include/decomp/decomp.h that the package uses, handing torch tensors to the
engine without copying them, reading the decomposed tensors back, routing the
engine's log lines to the ``decompd.engine`` logger (its errors and warnings
as such, its INFO and DEBUG lines at DEBUG) and turning its error codes into
exceptions (decompd.errors).

Where the library comes from, in order:

1. ``DECOMPD_LIBRARY`` — a path to libdecomp.so (or the folder holding it);
   when set it is the only candidate, so a typo fails loudly instead of
   silently picking another copy.
2. The system's copy, as installed by ``meson install`` (the README's
   setup): ``ctypes.util.find_library("decomp")``, then the loader's own
   search for ``libdecomp.so.0`` (ld.so.cache, LD_LIBRARY_PATH), then the
   usual /usr/local and /usr library folders.

The library is loaded on first use, so ``import decompd`` works without it
and the error, when it comes, says how to fix it.
"""

import ctypes
import ctypes.util
import json
import logging
import os
import sys
import threading

import torch

from . import _c_constants as C
from .errors import EngineNotFoundError, error_class

__all__ = ["library", "library_path", "decompose", "normalize_info",
           "parse_policy"]

_log = logging.getLogger("decompd.engine")

# ---------------------------------------------------------------------------
# C types (include/decomp/decomp.h): numbers and struct layouts come from
# _c_constants, generated from the headers (scripts/gen_py_constants.py);
# the c_layouts test checks them against the C compiler's sizeof/offsetof.

MAX_DIMS = C.MAX_DIMS

_TORCH_TO_DTYPE = {
    torch.float32: C.DTYPE_F32,
    torch.float16: C.DTYPE_F16,
    torch.bfloat16: C.DTYPE_BF16,
    torch.float64: C.DTYPE_F64,
    torch.int64: C.DTYPE_I64,
    torch.int32: C.DTYPE_I32,
    torch.int16: C.DTYPE_I16,
    torch.int8: C.DTYPE_I8,
    torch.uint8: C.DTYPE_U8,
    torch.bool: C.DTYPE_BOOL,
}
_DTYPE_TO_TORCH = {v: k for k, v in _TORCH_TO_DTYPE.items()}

PHASE_SPECTRUM, PHASE_START, PHASE_DONE, PHASE_WORKING = (
    C.PHASE_SPECTRUM, C.PHASE_START, C.PHASE_DONE, C.PHASE_WORKING)
# Seconds between the engine's progress reports inside a long layer (each
# is also where a KeyboardInterrupt raised in the callback stops the run).
PROGRESS_INTERVAL = 0.5


def _fields(layout, callbacks=None):
    """ctypes _fields_ from a generated layout (_c_constants.STRUCT_*):
    ctypes type names resolved, function pointer typedefs from
    `callbacks`."""
    out = []
    for name, type_name, n in layout:
        if callbacks and type_name in callbacks:
            t = callbacks[type_name]
        else:
            t = getattr(ctypes, type_name)
        out.append((name, t * n if n else t))
    return out


class _Tensor(ctypes.Structure):
    _fields_ = _fields(C.STRUCT_TENSOR)


class _Progress(ctypes.Structure):
    _fields_ = _fields(C.STRUCT_PROGRESS)


_PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p,
                                ctypes.POINTER(_Progress))
_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int,
                           ctypes.c_char_p, ctypes.c_char_p)


class _Options(ctypes.Structure):
    # decomp_options; fields are only ever appended (the engine reads the
    # prefix it knows: an engine older than a field ignores it). Among them
    # `calibration` (a weight set of decompd.calibrate's Gram matrices whose
    # metadata is the calibration file's __metadata__) and `profile` (a
    # latency profile's JSON text, decompd.latency), each with its
    # "sha256:<hex>" digest; NULL for none.
    _fields_ = _fields(C.STRUCT_OPTIONS,
                       {"decomp_progress_fn": _PROGRESS_FN})


def engine_threads():
    """Cores the engine may use for one decomposition: DECOMPD_THREADS, else
    OPENBLAS_NUM_THREADS (a process that pins BLAS gets the same engine),
    else the cores this process may run on. The engine's output bytes depend
    on this number (see decomp_options.threads); a daemon with W workers on
    C cores uses C // W, so `decompd --workers 1` gives the same bytes as
    this default on the same machine."""
    for var in ("DECOMPD_THREADS", "OPENBLAS_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v:
            try:
                n = int(v)
            except ValueError:
                raise ValueError(f"{var}={v!r} is not a number of threads")
            if n >= 1:
                return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_P = ctypes.c_void_p  # opaque handles
_PP = ctypes.POINTER(ctypes.c_void_p)

_PROTOTYPES = {
    # name: (restype, argtypes)
    "decomp_ctx_new": (_P, []),
    "decomp_ctx_free": (None, [_P]),
    "decomp_ctx_set_log": (None, [_P, _LOG_FN, _P, ctypes.c_int]),
    "decomp_ctx_set_progress_interval": (None, [_P, ctypes.c_double]),
    "decomp_errmsg": (ctypes.c_char_p, [_P]),
    "decomp_errcode": (ctypes.c_int, [_P]),
    "decomp_free": (None, [_P]),
    "decomp_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "decomp_error_code": (ctypes.c_char_p, [ctypes.c_int]),
    "decomp_weights_new": (ctypes.c_int, [_P, _PP]),
    "decomp_weights_add": (ctypes.c_int, [_P, ctypes.POINTER(_Tensor)]),
    "decomp_weights_count": (ctypes.c_size_t, [_P]),
    "decomp_weights_at": (ctypes.POINTER(_Tensor), [_P, ctypes.c_size_t]),
    "decomp_weights_free": (None, [_P]),
    "decomp_weights_set_metadata": (ctypes.c_int, [_P, ctypes.c_char_p]),
    "decomp_spec_parse": (ctypes.c_int,
                          [_P, ctypes.c_char_p, ctypes.c_size_t, _PP]),
    "decomp_spec_free": (None, [_P]),
    "decomp_policy_parse": (ctypes.c_int, [_P, ctypes.c_char_p, _PP]),
    "decomp_policy_to_json": (_P, [_P]),
    "decomp_policy_free": (None, [_P]),
    "decomp_decompose": (ctypes.c_int,
                         [_P, _P, _P, _P, ctypes.POINTER(_Options), _PP]),
    "decomp_result_weights": (_P, [_P]),
    "decomp_result_info": (ctypes.c_char_p, [_P]),
    "decomp_result_free": (None, [_P]),
    "decomp_info_normalize": (ctypes.c_int,
                              [_P, ctypes.c_char_p, ctypes.c_size_t,
                               ctypes.POINTER(_P)]),
}

# ---------------------------------------------------------------------------
# Loading

_lock = threading.Lock()
_lib = None
_lib_path = None

_HOW_TO_FIX = (
    "Install the engine with the project's meson build "
    "(`meson setup build && ninja -C build && meson install -C build`, then "
    "`ldconfig`), or set DECOMPD_LIBRARY=/path/to/libdecomp.so")


def _candidates():
    """(path, from_env) pairs to try, in order."""
    env = os.environ.get("DECOMPD_LIBRARY")
    if env:
        if os.path.isdir(env):
            env = os.path.join(env, "libdecomp.so")
        return [(env, True)]
    out = []
    found = ctypes.util.find_library("decomp")
    if found:
        out.append((found, False))
    out.append(("libdecomp.so.0", False))
    multiarch = getattr(sys.implementation, "_multiarch", None)
    for prefix in ("/usr/local", "/usr"):
        dirs = []
        if multiarch:
            dirs.append(os.path.join(prefix, "lib", multiarch))
        dirs += [os.path.join(prefix, "lib64"), os.path.join(prefix, "lib")]
        for d in dirs:
            path = os.path.join(d, "libdecomp.so.0")
            if os.path.exists(path):
                out.append((path, False))
    return out


def _declare(lib, path):
    missing = []
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise EngineNotFoundError(
            f"{path} is a libdecomp without {', '.join(missing)}: it is older "
            f"than this Python package. {_HOW_TO_FIX}")


def library():
    """The loaded engine (a ctypes.CDLL), loading it on first call."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        errors = []
        for path, from_env in _candidates():
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                if from_env:
                    raise EngineNotFoundError(
                        f"DECOMPD_LIBRARY={os.environ['DECOMPD_LIBRARY']}: "
                        f"cannot load the decompd engine: {e}") from None
                errors.append(f"{path}: {e}")
                continue
            _declare(lib, path)
            _lib, _lib_path = lib, path
            return _lib
        tried = "; ".join(errors) if errors else "nothing found"
        raise EngineNotFoundError(
            f"the decompd engine (libdecomp.so) was not found ({tried}). "
            f"{_HOW_TO_FIX}")


def library_path():
    """The path (or soname) the engine was loaded from."""
    library()
    return _lib_path


# ---------------------------------------------------------------------------
# Context: one per call, with its log handler and error reporting

# The engine's INFO lines (one per layer) say what the package's own
# per-layer INFO lines on "decompd" already say: they go to DEBUG.
_LEVELS = {C.LOG_ERROR: logging.ERROR, C.LOG_WARN: logging.WARNING,
           C.LOG_INFO: logging.DEBUG, C.LOG_DEBUG: logging.DEBUG}


def _engine_max_level():
    """The engine's max log level matching what the logger would emit, so the
    engine never formats a line nobody reads (-1: none)."""
    for engine_level in (3, 2, 1, 0):
        if _log.isEnabledFor(_LEVELS[engine_level]):
            return engine_level
    return -1


class _Context:
    def __init__(self):
        self.lib = library()
        self.ptr = self.lib.decomp_ctx_new()
        if not self.ptr:
            raise MemoryError("decomp_ctx_new: out of memory")
        self.pending = None  # an exception raised inside a callback
        # WORKING events inside a long layer: the bar moves, Ctrl-C lands.
        self.lib.decomp_ctx_set_progress_interval(self.ptr,
                                                  PROGRESS_INTERVAL)
        max_level = _engine_max_level()
        self._log_cb = _LOG_FN(self._on_log)
        if max_level >= 0:
            self.lib.decomp_ctx_set_log(self.ptr, self._log_cb, None,
                                        max_level)

    def _on_log(self, _user, level, topic, msg):
        try:
            _log.log(_LEVELS.get(level, logging.DEBUG), "%s: %s",
                     topic.decode("utf-8", "replace") if topic else "engine",
                     msg.decode("utf-8", "replace") if msg else "")
        except BaseException:  # never let an exception cross into C
            pass

    def check(self, rc, what):
        """Raise the exception for engine return code `rc` (0: nothing)."""
        if rc == 0:
            return
        if self.pending is not None:
            exc, self.pending = self.pending, None
            raise exc
        detail = (self.lib.decomp_errmsg(self.ptr) or b"").decode(
            "utf-8", "replace")
        name = (self.lib.decomp_error_code(rc) or b"unknown").decode()
        if not detail:
            detail = (self.lib.decomp_strerror(rc) or b"").decode()
        cls = error_class(rc)
        raise cls(rc, name, f"{what}: {detail}")

    def close(self):
        if self.ptr:
            self.lib.decomp_ctx_free(self.ptr)
            self.ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _take_string(lib, ptr):
    """Copy a library-allocated char * into a str and free it."""
    try:
        return ctypes.string_at(ptr).decode("utf-8")
    finally:
        lib.decomp_free(ptr)


# ---------------------------------------------------------------------------
# Tensors in and out


def _as_engine_tensor(t):
    """A CPU tensor the engine can read in place (same data when `t` already
    is one), or None when its dtype has no engine equivalent."""
    t = t.detach()
    if t.dtype not in _TORCH_TO_DTYPE:
        return None
    if t.device.type != "cpu":
        t = t.to("cpu")
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    if any(s < 0 for s in t.stride()) or t.dim() > MAX_DIMS:
        t = t.contiguous()
    return t


def _fill_tensor(ct, name_bytes, t):
    ct.name = name_bytes
    ct.dtype = _TORCH_TO_DTYPE[t.dtype]
    ct.ndim = t.dim()
    for i, (n, s) in enumerate(zip(t.shape, t.stride())):
        ct.shape[i] = n
        ct.stride[i] = s
    ct.offset = 0
    ct.data = t.data_ptr() if t.numel() else None
    ct.storage = None
    ct.storage_nbytes = 0


def _contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return strides[::-1]


def _read_tensor(ct):
    """Copy an engine tensor into a new CPU torch tensor."""
    dtype = _DTYPE_TO_TORCH.get(ct.dtype)
    if dtype is None:
        raise RuntimeError(f"engine tensor {ct.name!r}: unknown dtype "
                           f"{ct.dtype}")
    shape = [ct.shape[i] for i in range(ct.ndim)]
    stride = [ct.stride[i] for i in range(ct.ndim)]
    numel = 1
    for n in shape:
        numel *= n
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    flat = torch.empty(extent, dtype=dtype)
    ctypes.memmove(flat.data_ptr(), ct.data, extent * flat.element_size())
    if extent == numel and stride == _contiguous_strides(shape):
        return flat.view(shape)
    return flat.as_strided(shape, stride).contiguous()


# ---------------------------------------------------------------------------
# Operations


def parse_policy(text):
    """Check a policy (a name or JSON object text) with the engine; return its
    canonical JSON text."""
    with _Context() as ctx:
        pol = ctypes.c_void_p()
        ctx.check(ctx.lib.decomp_policy_parse(ctx.ptr, text.encode(),
                                              ctypes.byref(pol)),
                  "policy")
        try:
            return _take_string(ctx.lib, ctx.lib.decomp_policy_to_json(pol))
        finally:
            ctx.lib.decomp_policy_free(pol)


def normalize_info(text):
    """An info file's text (ours or the reference tool's) as our version-1
    JSON text, checked by the engine."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    with _Context() as ctx:
        out = ctypes.c_void_p()
        ctx.check(ctx.lib.decomp_info_normalize(ctx.ptr, data, len(data),
                                                ctypes.byref(out)),
                  "decompose info")
        return _take_string(ctx.lib, out)


def _add_tensors(ctx, w, tensors, keep, what):
    """Append (name, torch.Tensor) pairs to weight set `w`, in place for CPU
    tensors; `keep` holds what must outlive the set. Tensors whose dtype the
    engine has no equivalent for are left out."""
    ct = _Tensor()
    for name, t in tensors:
        et = _as_engine_tensor(t)
        if et is None:
            continue
        name_bytes = name.encode("utf-8")
        keep.append((et, name_bytes))
        _fill_tensor(ct, name_bytes, et)
        ctx.check(ctx.lib.decomp_weights_add(w, ctypes.byref(ct)),
                  f"{what}: {name}")


def _calibration_set(ctx, calibration, keep):
    """A weight set holding a Calibration's tensors, its metadata the
    calibration file's __metadata__ (decompd.calibration), as the engine would
    read it from the saved file with decomp_weights_open."""
    cw = ctypes.c_void_p()
    ctx.check(ctx.lib.decomp_weights_new(ctx.ptr, ctypes.byref(cw)),
              "calibration")
    try:
        _add_tensors(ctx, cw, calibration.tensors(), keep, "calibration")
        ctx.check(ctx.lib.decomp_weights_set_metadata(
            cw, calibration.metadata_json().encode("utf-8")),
            "calibration metadata")
    except BaseException:
        ctx.lib.decomp_weights_free(cw)
        raise
    return cw


def decompose(tensors, spec_json, policy_text, *, progress=None, want=None,
              calibration=None, profile=None):
    """Run the engine.

    tensors: iterable of (name, torch.Tensor) — the weights the spec's
      layers refer to; handed over in place when they are CPU tensors.
    spec_json: the layer spec text; policy_text: a name or JSON object text.
    progress: called with a dict per engine progress report; may raise to
      cancel the run (the exception is re-raised here).
    want: a predicate on tensor names; only those are copied back (default:
      all).
    calibration: a decompd.Calibration or None; handed to the engine as
      decomp_options.calibration (a weight set of its tensors and metadata)
      and calibration_digest. An engine that predates calibrations ignores
      those fields; its info file then lacks "calibration", and this raises
      RuntimeError rather than return an unwhitened result.
    profile: (JSON text, "sha256:<hex>") of a latency profile, or None;
      handed over as decomp_options.profile and profile_digest (an engine
      that ignores them: RuntimeError, as for a calibration).

    Returns (dict name -> CPU tensor, info JSON text).
    """
    with _Context() as ctx:
        lib = ctx.lib
        keep = []  # tensors (and names) that must outlive the call
        w = ctypes.c_void_p()
        cw = ctypes.c_void_p()
        spec = ctypes.c_void_p()
        pol = ctypes.c_void_p()
        res = ctypes.c_void_p()
        try:
            ctx.check(lib.decomp_weights_new(ctx.ptr, ctypes.byref(w)),
                      "weights")
            _add_tensors(ctx, w, tensors, keep, "weights")
            digest = None
            if calibration is not None:
                cw = _calibration_set(ctx, calibration, keep)
                digest = calibration.digest.encode("ascii")
            spec_bytes = spec_json.encode("utf-8")
            ctx.check(lib.decomp_spec_parse(ctx.ptr, spec_bytes,
                                            len(spec_bytes),
                                            ctypes.byref(spec)),
                      "layer spec")
            ctx.check(lib.decomp_policy_parse(ctx.ptr,
                                              policy_text.encode("utf-8"),
                                              ctypes.byref(pol)),
                      "policy")

            def on_progress(_user, p):
                try:
                    if progress is not None:
                        q = p.contents
                        progress({
                            "layer": (q.layer or b"").decode("utf-8",
                                                             "replace"),
                            "index": q.index, "total": q.total,
                            "phase": q.phase, "rank": q.rank,
                            "max_rank": q.max_rank, "seconds": q.seconds,
                            "fraction": q.fraction,
                            "skip_reason": (q.skip_reason.decode(
                                "utf-8", "replace")
                                if q.skip_reason else None),
                        })
                    return 0
                except BaseException as e:  # cancel, re-raise after the call
                    ctx.pending = e
                    return 1

            cb = _PROGRESS_FN(on_progress)
            opts = _Options()
            opts.progress = cb
            opts.progress_user = None
            opts.source_digest = None
            opts.source_format = None
            opts.record_spectra = False
            opts.threads = engine_threads()
            opts.calibration = cw.value
            opts.calibration_digest = digest
            if profile is not None:
                profile_text = profile[0].encode("utf-8")
                profile_digest = profile[1].encode("ascii")
                opts.profile = profile_text
                opts.profile_digest = profile_digest
            ctx.check(lib.decomp_decompose(ctx.ptr, w, spec, pol,
                                           ctypes.byref(opts),
                                           ctypes.byref(res)),
                      "decompose")
            info = lib.decomp_result_info(res).decode("utf-8")
            if calibration is not None and "calibration" not in json.loads(
                    info):
                raise RuntimeError(
                    f"{_lib_path}: this libdecomp ignored the calibration "
                    f"(it predates calibration-aware decomposition); "
                    f"install a newer engine. {_HOW_TO_FIX}")
            if profile is not None and "profile" not in json.loads(info):
                raise RuntimeError(
                    f"{_lib_path}: this libdecomp ignored the latency profile "
                    f"(it predates latency profiles); install a newer "
                    f"engine. {_HOW_TO_FIX}")
            rw = lib.decomp_result_weights(res)
            out = {}
            for i in range(lib.decomp_weights_count(rw)):
                t = lib.decomp_weights_at(rw, i).contents
                name = t.name.decode("utf-8")
                if want is None or want(name):
                    out[name] = _read_tensor(t)
            return out, info
        finally:
            lib.decomp_result_free(res)
            lib.decomp_policy_free(pol)
            lib.decomp_spec_free(spec)
            lib.decomp_weights_free(cw)
            lib.decomp_weights_free(w)
            del keep
