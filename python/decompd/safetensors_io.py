"""decompd.safetensors_io — a small, strict safetensors reader (no package
beyond numpy and PyTorch; the Python ``safetensors`` package is not needed).

    from decompd import load_safetensors
    state = load_safetensors("out/model.safetensors.index.json")  # or a
    model.load_state_dict(state)          # file, or a folder holding either

One file: 8 bytes of little-endian header length, a JSON header (at most
100 MB, no name twice) mapping each tensor to ``{"dtype", "shape",
"data_offsets"}`` (plus an optional ``__metadata__`` of strings), then the
data. Every entry is checked before any tensor is made: a known dtype (F64,
F32, F16, BF16, I64, I32, I16, I8, U8, BOOL), a shape of non-negative
integers, offsets inside the data whose span is exactly numel × itemsize,
and offsets that together tile the data with no gap or overlap. Tensors are
views of a private (copy-on-write) mapping of the file: nothing is read
until used, and writing to one never touches the file.

A sharded checkpoint (the Hugging Face layout the engine writes with
``--shard-bytes``): an index ``{"metadata": {"total_size": N},
"weight_map": {tensor: shard}}`` whose shards are plain file names
(``*.safetensors``, no ``/``, no ``..``) in the index's folder — or given
by name (``shards=``, as a cache holding them under other names has them).
Held to the engine's rules (src/core/shard_read.c): every tensor in exactly
one shard, the one the map names; every mapped tensor present; no shard
the map does not name (in the folder: no file named like a shard,
``NAME-of-N.safetensors``, that the map leaves out); total_size equal to
the tensors' bytes.

Errors are SafetensorsError (a ValueError) naming the file and the tensor
or shard. The header checks are shared with decompd.calibration.
"""

import json
import math
import mmap
import os
import struct
import sys
from collections import OrderedDict
from collections.abc import Mapping

from . import _c_constants as _C
from .errors import SafetensorsError

__all__ = ["load_safetensors", "SafetensorsError", "INDEX_NAME"]

# As the engine's readers (src/core/safetensors.c, shard_read.c).
HEADER_MAX = 100 * 1000 * 1000
INDEX_MAX = 100 * 1000 * 1000
INDEX_NAME = _C.ARTIFACT_INDEX
_SUFFIX = ".safetensors"

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
            "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _torch_dtypes():
    import torch
    return {"F64": torch.float64, "F32": torch.float32,
            "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
            "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


# ---------------------------------------------------------------------------
# The header (shared with decompd.calibration)


class _HeaderError(Exception):
    """A duplicate name, raised out of json.loads (which would otherwise
    report it as a JSON syntax error)."""


def parse_header(head, file_len, bad):
    """The header object of a safetensors file whose first bytes are `head`
    (at least 8 + the header's length, or all of a shorter file) and whose
    size is `file_len`. `bad(msg)` makes the exception to raise. Returns
    (header dict in file order, data_start)."""
    if file_len < 8:
        raise bad(f"{file_len} bytes: too short for a safetensors header")
    (hlen,) = struct.unpack_from("<Q", head, 0)
    if hlen > HEADER_MAX:
        raise bad(f"header of {hlen} bytes is over the 100 MB limit")
    if hlen > file_len - 8:
        raise bad(f"header of {hlen} bytes runs past the end of the file "
                  f"({file_len} bytes; truncated?)")

    def no_duplicates(pairs):
        seen = OrderedDict()
        for k, v in pairs:
            if k in seen:
                raise _HeaderError(f"header names {k!r} twice")
            seen[k] = v
        return seen

    try:
        header = json.loads(bytes(head[8:8 + hlen]).decode("utf-8"),
                            object_pairs_hook=no_duplicates)
    except _HeaderError as e:
        raise bad(str(e)) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"header is not JSON: {e}") from None
    if not isinstance(header, Mapping):
        raise bad("header is not a JSON object")
    return header, 8 + hlen


def check_entries(header, data_len, bad, describe=None):
    """The tensor entries of a parsed header, each well formed and together
    tiling the `data_len` bytes of data: OrderedDict name -> (dtype, shape,
    (begin, end)) in header order. `describe(name)` names a tensor in
    messages (default "tensor 'name'")."""
    describe = describe or (lambda n: f"tensor {n!r}")
    entries = OrderedDict()
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not name:
            raise bad("a tensor has an empty name")
        if not isinstance(e, Mapping) or set(e) != {"dtype", "shape",
                                                     "data_offsets"}:
            raise bad(f"{describe(name)}: entry must have exactly dtype, "
                      f"shape and data_offsets")
        dt, shape, off = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dt, str) or dt not in ITEMSIZE:
            raise bad(f"{describe(name)}: unknown dtype {dt!r}")
        if (not isinstance(shape, list) or len(shape) > 8 or not all(
                type(d) is int and d >= 0 for d in shape)):
            raise bad(f"{describe(name)}: shape {shape!r} is not a list of "
                      f"at most 8 non-negative integers")
        if (not isinstance(off, list) or len(off) != 2
                or not all(type(o) is int for o in off)
                or not 0 <= off[0] <= off[1]):
            raise bad(f"{describe(name)}: data_offsets {off!r} is not "
                      f"[begin, end] with 0 <= begin <= end")
        if off[1] > data_len:
            raise bad(f"{describe(name)}: data_offsets end {off[1]} is past "
                      f"the data section ({data_len} bytes)")
        need = math.prod(shape) * ITEMSIZE[dt]
        if off[1] - off[0] != need:
            raise bad(f"{describe(name)}: data_offsets span "
                      f"{off[1] - off[0]} bytes, its shape and dtype need "
                      f"{need}")
        entries[name] = (dt, shape, (off[0], off[1]))
    pos = 0
    for name, (_, _, off) in sorted(entries.items(), key=lambda kv: kv[1][2]):
        if off[0] != pos:
            raise bad(f"{describe(name)}: data_offsets "
                      f"{'leave a gap' if off[0] > pos else 'overlap'} "
                      f"(begins at {off[0]}, the data before ends at {pos})")
        pos = off[1]
    if pos != data_len:
        raise bad(f"tensors cover {pos} bytes of a {data_len}-byte data "
                  f"section")
    return entries


def check_metadata(header, bad):
    """The ``__metadata__`` dict (strings to strings), or None."""
    meta = header.get("__metadata__")
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise bad("__metadata__ is not an object")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise bad(f"__metadata__ {k!r} is not a string")
    return dict(meta)


# ---------------------------------------------------------------------------
# One file


def _read_file(path, label=None):
    """(OrderedDict name -> tensor, metadata, bytes of tensor data) of the
    safetensors file at `path`; `label` prefixes messages (a shard's name)."""
    import torch
    if sys.byteorder != "little":
        raise SafetensorsError(f"{path}: safetensors data is little-endian; "
                               f"this reader runs on little-endian hosts "
                               f"only")
    where = f"{path}" if label is None else f"shard {label} ({path})"

    def bad(msg):
        return SafetensorsError(f"{where}: {msg}")

    dtypes = _torch_dtypes()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) == 8:
            (hlen,) = struct.unpack_from("<Q", head, 0)
            if hlen <= HEADER_MAX and hlen <= size - 8:
                head += f.read(hlen)
        header, data_start = parse_header(head, size, bad)
        meta = check_metadata(header, bad)
        entries = check_entries(header, size - data_start, bad)
        mm = None
        if size > data_start:
            # Private: tensors are writable, the file is never written.
            mm = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
    out = OrderedDict()
    total = 0
    for name, (dt, shape, (b, e)) in entries.items():
        tdt = dtypes[dt]
        n = e - b
        total += n
        if n == 0:
            t = torch.empty(shape, dtype=tdt)
        else:
            start = data_start + b
            t = torch.frombuffer(mm, dtype=torch.uint8, count=n,
                                 offset=start)
            if start % ITEMSIZE[dt]:
                t = t.clone()  # unaligned elements: a copy of its own
            t = t.view(tdt).reshape(shape)
            if dt == "BOOL" and bool((t.view(torch.uint8) > 1).any()):
                raise bad(f"tensor {name!r}: BOOL holds a byte other than "
                          f"0 or 1")
        out[name] = t
    return out, meta, total


# ---------------------------------------------------------------------------
# Sharded checkpoints


def shard_name_problem(name):
    """Why `name` cannot be a shard's name (the engine's rules), or None."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        return "is longer than 255 bytes"
    if "/" in name or "\\" in name:
        return ("holds a '/' (shards must be plain file names in the "
                "index's folder)")
    if ".." in name or name == ".":
        return ("holds \"..\" (shards must be plain file names in the "
                "index's folder)")
    if len(name) <= len(_SUFFIX) or not name.endswith(_SUFFIX):
        return "does not end in \".safetensors\""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return "holds a control character"
    return None


def looks_like_shard(name):
    """NAME-00001-of-00003.safetensors (the Hub's shards): such a file beside
    an index that does not name it is an unreferenced shard."""
    return (name.endswith(_SUFFIX) and len(name) > len(_SUFFIX)
            and not name.startswith(".") and name.find("-of-") > 0)


def read_index(path):
    """(weight_map OrderedDict tensor -> shard, total_size or None) of the
    index file at `path`, checked."""
    def bad(msg):
        return SafetensorsError(f"{path}: index: {msg}")

    with open(path, "rb") as f:
        text = f.read(INDEX_MAX + 1)
    if len(text) > INDEX_MAX:
        raise bad("over the 100 MB limit")

    def no_duplicates(pairs):
        seen = OrderedDict()
        for k, v in pairs:
            if k in seen:
                raise _HeaderError(f"names {k!r} twice")
            seen[k] = v
        return seen

    try:
        root = json.loads(text.decode("utf-8"),
                          object_pairs_hook=no_duplicates)
    except _HeaderError as e:
        raise bad(str(e)) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(root, Mapping) or not isinstance(
            root.get("weight_map"), Mapping):
        raise bad("not an object with a \"weight_map\" object")
    wmap = root["weight_map"]
    if not wmap:
        raise bad("weight_map is empty")
    total = None
    meta = root.get("metadata")
    if meta is not None:
        ts = meta.get("total_size") if isinstance(meta, Mapping) else -1
        if not isinstance(meta, Mapping) or (
                ts is not None and (type(ts) is not int or ts < 0)):
            raise bad("metadata is not an object whose total_size is a "
                      "non-negative integer")
        total = ts
    for k, v in wmap.items():
        if not k:
            raise bad("weight_map holds an empty tensor name")
        if not isinstance(v, str):
            raise bad(f"weight_map: {k}: the shard is not a string")
        why = shard_name_problem(v)
        if why:
            raise bad(f"weight_map: {k}: shard name {v!r} {why}")
    return OrderedDict(wmap), total


def _load_sharded(index_path, shards=None):
    wmap, total = read_index(index_path)

    def bad(msg):
        return SafetensorsError(f"{index_path}: {msg}")

    first = OrderedDict()  # shard -> first tensor the map puts in it
    for k, v in wmap.items():
        first.setdefault(v, k)
    if shards is None:
        folder = os.path.dirname(os.path.abspath(index_path))
        paths = {s: os.path.join(folder, s) for s in first}
        for n in sorted(os.listdir(folder)):
            if n not in first and looks_like_shard(n):
                raise bad(f"shard {n} (in {folder}) is not referenced by "
                          f"the index's weight_map")
    else:
        paths = {}
        for n, p in shards.items():
            why = shard_name_problem(n)
            if why:
                raise bad(f"shard {n!r}: {why}")
            if n not in first:
                raise bad(f"shard {n} is not referenced by the index's "
                          f"weight_map")
            paths[n] = os.fspath(p)
    out = OrderedDict()
    where = {}
    nbytes = 0
    for s, t0 in first.items():
        p = paths.get(s)
        if p is None or not os.path.isfile(p):
            raise bad(f"shard {s} (the index puts {t0} in it) is missing")
        tensors, _, n = _read_file(p, s)
        nbytes += n
        for name, t in tensors.items():
            want = wmap.get(name)
            if name in out:
                raise bad(f"tensor {name} is in two shards: {where[name]} "
                          f"and {s}")
            if want is None:
                raise bad(f"tensor {name} is in shard {s} but not in the "
                          f"index's weight_map")
            if want != s:
                raise bad(f"tensor {name} is in shard {s}, but the index "
                          f"puts it in {want}")
            out[name] = t
            where[name] = s
    for name, s in wmap.items():
        if name not in out:
            raise bad(f"tensor {name}: the index puts it in shard {s}, "
                      f"which does not hold it")
    if total is not None and total != nbytes:
        raise bad(f"index: metadata.total_size is {total} bytes, the "
                  f"shards' tensors hold {nbytes}")
    return out


def _is_index(path):
    return os.path.basename(path).endswith(".json")


def load_safetensors(path, shards=None):
    """Every tensor of a safetensors checkpoint, as an OrderedDict name ->
    torch.Tensor (views of a private mapping of the file: nothing is read
    until used).

    path: a ``.safetensors`` file; a sharded checkpoint's index (a
    ``.json`` file, e.g. ``model.safetensors.index.json``), its shards in
    the same folder; or a folder holding one index (else one
    ``.safetensors`` file). shards: {shard name: path} for shards kept
    elsewhere (then `path` is the index, whatever its name, and the shards
    are exactly those the index names). SafetensorsError (a ValueError) for
    anything malformed, naming the file and the tensor or shard;
    FileNotFoundError for a missing file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        idx = [n for n in names if n.endswith(".safetensors.index.json")]
        one = [n for n in names if n.endswith(_SUFFIX)
               and not n.startswith(".")]
        if len(idx) == 1:
            path = os.path.join(path, idx[0])
        elif len(idx) > 1:
            raise SafetensorsError(f"{path}: several index files "
                                   f"({', '.join(idx)}): name one")
        elif len(one) == 1:
            path = os.path.join(path, one[0])
        else:
            raise SafetensorsError(
                f"{path}: no index and {len(one)} .safetensors files: "
                f"name the file to read")
    if shards is not None or _is_index(path):
        return _load_sharded(path, shards)
    return _read_file(path)[0]
