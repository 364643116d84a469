"""decomp_ctypes — a small, generic ctypes binding of libdecomp for tests.

Finds the library from $DECOMPD_LIBRARY (set by meson for the python suite)
and wraps the weight-set part of include/decomp/decomp.h: contexts, open
(file or memory), save, iteration, metadata, errors. Tensors come back as
numpy arrays that view the library's memory (zero-copy, strides honoured);
keep the WeightSet alive while using them.

    lib = Lib()
    with lib.open("model.pth") as ws:
        for name, arr in ws.items(): ...
        ws.save("out.safetensors", "safetensors")
"""
import ctypes as C
import json
import os

import numpy as np

# Numbers and layouts generated from include/decomp/*.h
# (scripts/gen_py_constants.py).
from decompd import _c_constants as CC

MAX_DIMS = CC.MAX_DIMS

# safetensors dtype names, indexed by decomp_dtype number.
_DT = {getattr(CC, "DTYPE_" + n): n for n in (
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL")}
DTYPES = [_DT[i] for i in range(len(_DT))]
# numpy views of each dtype (BF16 as raw uint16 bits).
NUMPY = {
    "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "F64": np.float64, "I64": np.int64, "I32": np.int32, "I16": np.int16,
    "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
FORMATS = {"unknown": CC.FORMAT_UNKNOWN, "pth": CC.FORMAT_PTH,
           "safetensors": CC.FORMAT_SAFETENSORS,
           "torchscript": CC.FORMAT_TORCHSCRIPT}


def ctypes_fields(layout, callbacks=None):
    """ctypes _fields_ from a generated layout (CC.STRUCT_*)."""
    out = []
    for name, type_name, n in layout:
        t = (callbacks[type_name] if callbacks and type_name in callbacks
             else getattr(C, type_name))
        out.append((name, t * n if n else t))
    return out


class Tensor(C.Structure):
    _fields_ = ctypes_fields(CC.STRUCT_TENSOR)


class DecompError(Exception):
    def __init__(self, code, name, message):
        super().__init__(f"{name} ({code}): {message}")
        self.code = code
        self.name = name
        self.message = message


def _find_library():
    path = os.environ.get("DECOMPD_LIBRARY")
    if path:
        return path
    build = os.environ.get("DECOMPD_BUILD_DIR", "build")
    return os.path.join(build, "src", "core", "libdecomp.so")


class Lib:
    def __init__(self, path=None):
        L = self.L = C.CDLL(path or _find_library())
        P = C.c_void_p
        L.decomp_ctx_new.restype = P
        L.decomp_ctx_free.argtypes = [P]
        L.decomp_errmsg.restype = C.c_char_p
        L.decomp_errmsg.argtypes = [P]
        L.decomp_error_code.restype = C.c_char_p
        L.decomp_error_code.argtypes = [C.c_int]
        L.decomp_detect_format.restype = C.c_int
        L.decomp_detect_format.argtypes = [P, C.c_size_t]
        L.decomp_weights_open.argtypes = [P, C.c_char_p, C.POINTER(P)]
        L.decomp_weights_open_memory.argtypes = [P, P, C.c_size_t, C.POINTER(P)]
        L.decomp_weights_new.argtypes = [P, C.POINTER(P)]
        L.decomp_weights_add.argtypes = [P, C.POINTER(Tensor)]
        L.decomp_weights_save.argtypes = [P, P, C.c_char_p, C.c_int]
        L.decomp_weights_free.argtypes = [P]
        L.decomp_weights_count.restype = C.c_size_t
        L.decomp_weights_count.argtypes = [P]
        L.decomp_weights_at.restype = C.POINTER(Tensor)
        L.decomp_weights_at.argtypes = [P, C.c_size_t]
        L.decomp_weights_format.restype = C.c_int
        L.decomp_weights_format.argtypes = [P]
        L.decomp_weights_metadata.restype = C.c_char_p
        L.decomp_weights_metadata.argtypes = [P]
        L.decomp_weights_set_metadata.argtypes = [P, C.c_char_p]
        self.ctx = L.decomp_ctx_new()

    def __del__(self):
        if getattr(self, "ctx", None):
            self.L.decomp_ctx_free(self.ctx)
            self.ctx = None

    def check(self, rc):
        if rc != 0:
            raise DecompError(rc, self.L.decomp_error_code(rc).decode(),
                              self.L.decomp_errmsg(self.ctx).decode())

    def detect(self, data: bytes) -> str:
        f = self.L.decomp_detect_format(data, len(data))
        return {v: k for k, v in FORMATS.items()}[f]

    def open(self, path):
        h = C.c_void_p()
        self.check(self.L.decomp_weights_open(self.ctx, os.fsencode(path),
                                              C.byref(h)))
        return WeightSet(self, h)

    def open_memory(self, data: bytes):
        buf = C.create_string_buffer(data, len(data))
        h = C.c_void_p()
        self.check(self.L.decomp_weights_open_memory(self.ctx, buf, len(data),
                                                     C.byref(h)))
        return WeightSet(self, h, keep=buf)

    def new(self):
        """An empty set to fill with WeightSet.add (arrays are kept alive)."""
        h = C.c_void_p()
        self.check(self.L.decomp_weights_new(self.ctx, C.byref(h)))
        return WeightSet(self, h)


class WeightSet:
    def __init__(self, lib, handle, keep=None):
        self.lib = lib
        self.h = handle
        self._keep = [keep] if keep is not None else []

    def close(self):
        if self.h:
            self.lib.L.decomp_weights_free(self.h)
            self.h = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self):
        return self.lib.L.decomp_weights_count(self.h)

    def format(self):
        f = self.lib.L.decomp_weights_format(self.h)
        return {v: k for k, v in FORMATS.items()}[f]

    def raw(self, i):
        return self.lib.L.decomp_weights_at(self.h, i).contents

    def names(self):
        return [self.raw(i).name.decode() for i in range(len(self))]

    def array(self, i):
        """The i-th tensor as a numpy view of the library's memory."""
        t = self.raw(i)
        dt = DTYPES[t.dtype]
        np_dt = np.dtype(NUMPY[dt])
        shape = tuple(t.shape[k] for k in range(t.ndim))
        strides = tuple(t.stride[k] * np_dt.itemsize for k in range(t.ndim))
        isz = np_dt.itemsize
        count = t.storage_nbytes // isz
        if count == 0 or not t.storage:
            return np.zeros(shape, dtype=np_dt)
        raw = (C.c_char * (count * isz)).from_address(t.storage)
        base = np.frombuffer(raw, dtype=np_dt)  # the storage, in elements
        return np.lib.stride_tricks.as_strided(
            base[t.offset:], shape=shape, strides=strides, writeable=False)

    def dtype(self, i):
        return DTYPES[self.raw(i).dtype]

    def items(self):
        for i in range(len(self)):
            yield self.raw(i).name.decode(), self.array(i)

    def metadata(self):
        m = self.lib.L.decomp_weights_metadata(self.h)
        return None if m is None else json.loads(m.decode(),
                                                 object_pairs_hook=dict)

    def set_metadata(self, obj):
        text = None if obj is None else json.dumps(obj).encode()
        self.lib.check(self.lib.L.decomp_weights_set_metadata(self.h, text))

    def add(self, name, arr, dtype=None):
        """Append a numpy array (kept alive by the set); dtype defaults from
        the array ("BF16" must be given for uint16 bits meant as bfloat16)."""
        arr = np.asarray(arr)
        if dtype is None:
            dtype = {v: k for k, v in NUMPY.items() if k != "BF16"}[arr.dtype.type]
        t = Tensor()
        t.name = name.encode()
        t.dtype = DTYPES.index(dtype)
        t.ndim = arr.ndim
        for k in range(arr.ndim):
            t.shape[k] = arr.shape[k]
            t.stride[k] = arr.strides[k] // arr.itemsize
        t.offset = 0
        t.data = arr.ctypes.data if arr.size else None
        self.lib.check(self.lib.L.decomp_weights_add(self.h, C.byref(t)))
        self._keep.append(arr)

    def save(self, path, fmt):
        self.lib.check(self.lib.L.decomp_weights_save(
            self.lib.ctx, self.h, os.fsencode(path), FORMATS[fmt]))
