"""decomp_ctypes_engine — the decomposition half of the test binding.

Extends decomp_ctypes (the weight-set binding) with layer specs, policies,
decomp_decompose and decomp_info_normalize, without changing it:

    from decomp_ctypes import Lib
    from decomp_ctypes_engine import Engine
    eng = Engine(Lib())
    ws = eng.lib.new(); ws.add("conv.weight", w)
    with eng.decompose(ws, spec, {"name": "fixed", "rank": 4}) as res:
        res.info["layers"][0]["rank"]; dict(res.weights.items())
"""
import ctypes as C
import json

from decomp_ctypes import CC, ctypes_fields
from decomp_ctypes import DecompError, WeightSet  # noqa: F401 (re-export)


class _Progress(C.Structure):
    _fields_ = ctypes_fields(CC.STRUCT_PROGRESS)


_PROGRESS_FN = C.CFUNCTYPE(C.c_int, C.c_void_p, C.POINTER(_Progress))


class _Options(C.Structure):
    # Every field of include/decomp/decomp.h's decomp_options, in order
    # (generated from the header): the engine reads them all, so a shorter
    # struct here would hand it whatever lies past the end (ctypes
    # zero-fills the ones set to nothing).
    _fields_ = ctypes_fields(CC.STRUCT_OPTIONS,
                             {"decomp_progress_fn": _PROGRESS_FN})


class _BorrowedSet(WeightSet):
    """A result's weights: owned by the result, never freed here."""

    def close(self):
        self.h = None

    __del__ = close


class Result:
    def __init__(self, engine, handle):
        self.engine = engine
        self.h = handle
        L = engine.lib.L
        self.weights = _BorrowedSet(engine.lib, C.c_void_p(L.decomp_result_weights(handle)))
        self.info_text = L.decomp_result_info(handle).decode()
        self.info = json.loads(self.info_text)

    def arrays(self):
        """{name: numpy copy} of the result's tensors, in order."""
        return {n: a.copy() for n, a in self.weights.items()}

    def close(self):
        if self.h:
            self.weights.h = None
            self.engine.lib.L.decomp_result_free(self.h)
            self.h = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Engine:
    def __init__(self, lib):
        self.lib = lib
        L = lib.L
        P = C.c_void_p
        L.decomp_spec_parse.argtypes = [P, C.c_char_p, C.c_size_t, C.POINTER(P)]
        L.decomp_spec_free.argtypes = [P]
        L.decomp_policy_parse.argtypes = [P, C.c_char_p, C.POINTER(P)]
        L.decomp_policy_free.argtypes = [P]
        L.decomp_decompose.argtypes = [P, P, P, P, C.POINTER(_Options), C.POINTER(P)]
        L.decomp_result_weights.restype = P
        L.decomp_result_weights.argtypes = [P]
        L.decomp_result_info.restype = C.c_char_p
        L.decomp_result_info.argtypes = [P]
        L.decomp_result_free.argtypes = [P]
        L.decomp_info_normalize.argtypes = [P, C.c_char_p, C.c_size_t, C.POINTER(P)]
        L.decomp_free.argtypes = [P]

    def decompose(self, ws, spec, policy, record_spectra=False, progress=None):
        """Run decomp_decompose; `spec` a list of layer dicts (or the JSON
        object), `policy` a name or a dict. Returns a Result (a context
        manager). `progress(dict) -> bool` may cancel by returning True."""
        L, ctx = self.lib.L, self.lib.ctx
        if isinstance(spec, list):
            spec = {"layers": spec}
        stext = json.dumps(spec).encode()
        ptext = (policy if isinstance(policy, str) else json.dumps(policy)).encode()
        sp, pol, res = C.c_void_p(), C.c_void_p(), C.c_void_p()
        self.lib.check(L.decomp_spec_parse(ctx, stext, len(stext), C.byref(sp)))
        try:
            self.lib.check(L.decomp_policy_parse(ctx, ptext, C.byref(pol)))
            opts = _Options()
            opts.record_spectra = record_spectra
            if progress:
                def cb(_user, p):
                    c = p.contents
                    return 1 if progress({
                        "layer": c.layer.decode(), "index": c.index,
                        "total": c.total, "phase": c.phase, "rank": c.rank,
                        "max_rank": c.max_rank}) else 0
                opts.progress = _PROGRESS_FN(cb)
            self.lib.check(L.decomp_decompose(ctx, ws.h, sp, pol, C.byref(opts),
                                              C.byref(res)))
        finally:
            L.decomp_policy_free(pol)
            L.decomp_spec_free(sp)
        return Result(self, res)

    def normalize_info(self, text):
        """decomp_info_normalize: our version-1 JSON (as a dict)."""
        if isinstance(text, str):
            text = text.encode()
        out = C.c_void_p()
        self.lib.check(self.lib.L.decomp_info_normalize(
            self.lib.ctx, text, len(text), C.byref(out)))
        try:
            return json.loads(C.string_at(out.value).decode())
        finally:
            self.lib.L.decomp_free(out)
