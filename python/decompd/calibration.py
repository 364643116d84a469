"""Calibration: the Gram matrices of each layer's inputs on real data.

The whitened (SVD-LLM) decomposition of DESIGN.md ("Beyond spatial SVD")
needs, per layer, G = XᵀX over the rows X the layer reads: tokens for an
nn.Linear, unfolded input patches for an nn.Conv2d. They are computed where
the data is, in the user's process, and travel to the engine as a
safetensors file (its format: README.md, "decompctl decompose"). This file owns:

- ``calibrate(model, batches)``: forward pre-hooks on every decomposable
  layer (exactly nn.Conv2d and nn.Linear, see decompd.spec), the user's
  batches run under torch.no_grad in eval mode, a Gram accumulated per
  distinct input (never the activations themselves);
- ``Calibration``: the result — ``.layers``, ``.gram(name)``,
  ``.count(name)``, ``.digest``, ``.save(path)`` and ``Calibration.load``
  (a small pure-Python safetensors writer and a reader that checks
  everything), and ``.tensors()`` / ``.metadata()`` for the engine.

What is accumulated, exactly as the layer computes:

- Linear: G [in, in] = Σ xᵀx over every row x of the input, all leading
  dims flattened; the count is the number of rows.
- Conv2d: G [g, n, n], n = (Cin/g)·kh·kw: per group j, Σ p pᵀ over the
  patches p of channels [j·Cin/g, (j+1)·Cin/g) the conv reads — stride,
  dilation, padding (numbers, 'valid', 'same' with torch's extra pixel
  after), padding mode (non-zero modes padded with F.pad first, as
  nn.Conv2d does); a patch's index is (c·kh + h)·kw + w (F.unfold's order).
  The count is batch × output positions.

Layers that read the same input tensor object in the same forward call
(q/k/v projections, gate/up) and would compute the same Gram from it (same
type and geometry) share one Gram, stored once under the first such layer's
name. Sharing is decided from every batch: two layers share only when, in
every forward, they read exactly the same tensors; otherwise each gets its
own sum.

A bare nn.Conv2d or nn.Linear passed as the model is named as the engine
names it ("conv", "linear"; decompd.spec.root_name).
"""

import fnmatch
import hashlib
import json
import logging
import math
import os
import struct
import weakref
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ._files import write_atomic
from ._progress import BatchReporter
from .safetensors_io import check_entries, parse_header
from .errors import CalibrationError
from .spec import is_plain_conv, is_plain_linear, root_name, walk

__all__ = ["calibrate", "Calibration", "FORMAT", "VERSION"]

log = logging.getLogger("decompd")

FORMAT = "decompd.calibration"
VERSION = "1"

# Rows (Linear) or unfolded elements (Conv2d) converted to the Gram's dtype
# at a time: bounds the temporary copies, whatever the batch size.
_CHUNK_ELEMENTS = 1 << 23

_ST_DTYPES = {"F64": (torch.float64, np.dtype("<f8")),
              "F32": (torch.float32, np.dtype("<f4")),
              "I64": (torch.int64, np.dtype("<i8"))}
_TORCH_ST = {v[0]: k for k, v in _ST_DTYPES.items()}

# Largest |G - Gᵀ| accepted on load, relative to max |G|.
_SYMMETRY_TOL = {"F64": 1e-8, "F32": 1e-4}


# ---------------------------------------------------------------------------
# The Calibration object


class Calibration:
    """Per-layer Gram matrices of inputs and their sample counts.

    Made by decompd.calibrate or Calibration.load; handed to
    auto_decomposition(calibration=…). Treat it as immutable: ``gram()``
    returns the stored tensor (not a copy), and ``digest`` is computed once.
    """

    def __init__(self, layers, grams, digest=None):
        # layers: OrderedDict name -> (key, type); grams: OrderedDict
        # key -> (CPU tensor, int count). Checked by the callers.
        self._layers = OrderedDict(layers)
        self._grams = OrderedDict(grams)
        self._digest = digest

    # -- reading --------------------------------------------------------

    @property
    def layers(self):
        """The calibrated layers' names, in model order."""
        return list(self._layers)

    def _entry(self, name):
        try:
            key, _ = self._layers[name]
        except KeyError:
            raise KeyError(f"{name!r}: not a calibrated layer") from None
        return self._grams[key]

    def gram(self, name):
        """Layer `name`'s Gram: [in, in] (Linear) or [g, n, n] (Conv2d), CPU,
        float64 unless calibrated in float32. Shared layers return the same
        tensor."""
        return self._entry(name)[0]

    def count(self, name):
        """The number of rows (tokens; batch × output positions) in
        `name`'s Gram."""
        return self._entry(name)[1]

    def layer_type(self, name):
        """"Linear" or "Conv2d"."""
        self._entry(name)
        return self._layers[name][1]

    def key(self, name):
        """The name its Gram is stored under (the first of the layers that
        share it)."""
        self._entry(name)
        return self._layers[name][0]

    def __contains__(self, name):
        return name in self._layers

    def __len__(self):
        return len(self._layers)

    def __repr__(self):
        return (f"Calibration({len(self._layers)} layers, "
                f"{len(self._grams)} Grams)")

    # -- the file -------------------------------------------------------

    def metadata(self):
        """The safetensors ``__metadata__`` (a dict of strings)."""
        layers = OrderedDict()
        for name, (key, typ) in self._layers.items():
            layers[name] = {"gram": key, "type": typ,
                            "shape": list(self._grams[key][0].shape)}
        return OrderedDict([
            ("format", FORMAT), ("version", VERSION),
            ("layers", json.dumps(layers, separators=(",", ":"))),
        ])

    def metadata_json(self):
        """metadata() as the JSON object text the engine's weight set
        takes (decomp_weights_set_metadata)."""
        return json.dumps(self.metadata(), separators=(",", ":"))

    def tensors(self):
        """[(tensor name, CPU tensor)] in the file's order: every KEY.count
        (int64 scalar), then every KEY.gram. Borrowed, not copies."""
        out = []
        for key, (_, count) in self._grams.items():
            out.append((f"{key}.count", torch.tensor(count, dtype=torch.int64)))
        for key, (gram, _) in self._grams.items():
            out.append((f"{key}.gram", gram))
        return out

    def _chunks(self):
        """The file's bytes, in pieces (header, then each tensor's data):
        counts first, so every tensor starts 8-byte aligned when the Grams
        are float64 (and 4-byte when float32)."""
        tensors = self.tensors()
        header = OrderedDict([("__metadata__", self.metadata())])
        pos = 0
        for name, t in tensors:
            n = t.numel() * t.element_size()
            header[name] = OrderedDict([
                ("dtype", _TORCH_ST[t.dtype]), ("shape", list(t.shape)),
                ("data_offsets", [pos, pos + n])])
            pos += n
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-(8 + len(text)) % 8)
        yield struct.pack("<Q", len(text)) + text
        for _, t in tensors:
            a = t.contiguous().numpy()
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            yield memoryview(np.ascontiguousarray(a)).cast("B")

    @property
    def digest(self):
        """"sha256:<hex>" of the saved file's bytes (of the file read, for a
        loaded Calibration)."""
        if self._digest is None:
            h = hashlib.sha256()
            for chunk in self._chunks():
                h.update(chunk)
            self._digest = "sha256:" + h.hexdigest()
        return self._digest

    def save(self, path):
        """Write the calibration file (safetensors, see the module doc) to
        `path`: a temporary file in the same folder, fsynced, then renamed,
        so `path` is either the whole new file or untouched. Returns the
        digest."""
        digest = "sha256:" + write_atomic(path, self._chunks(),
                                            ".calibration.")
        self._digest = digest
        return digest

    @classmethod
    def load(cls, path):
        """Read and check a calibration file; CalibrationError (a
        ValueError) naming the file and the layer (or tensor) for anything
        wrong, FileNotFoundError for a missing file."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            buf = bytearray(f.read())
        digest = "sha256:" + hashlib.sha256(buf).hexdigest()
        layers, grams = _parse(buf, path)
        return cls(layers, grams, digest)


def _as_calibration(obj):
    """A Calibration from a Calibration or a path."""
    if isinstance(obj, Calibration):
        return obj
    if isinstance(obj, (str, bytes, os.PathLike)):
        return Calibration.load(os.fsdecode(obj))
    raise TypeError(f"calibration must be a decompd.Calibration or the path "
                    f"of a calibration file, not {type(obj).__name__}")


# ---------------------------------------------------------------------------
# Reading a file


def _parse(buf, path):
    """(layers, grams) of a calibration file's bytes; CalibrationError for
    anything wrong."""

    def bad(msg):
        return CalibrationError(f"{path}: {msg}")

    header, data_start = parse_header(buf, len(buf), bad)
    data_len = len(buf) - data_start

    # __metadata__: format, version, layers.
    meta = header.get("__metadata__")
    if not isinstance(meta, Mapping):
        raise bad("no __metadata__: not a decompd calibration file")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise bad(f"__metadata__ {k!r} is not a string")
    if meta.get("format") != FORMAT:
        raise bad(f"__metadata__ format is {meta.get('format')!r}, not "
                  f"{FORMAT!r}")
    if meta.get("version") != VERSION:
        raise bad(f"__metadata__ version {meta.get('version')!r} is not "
                  f"supported (this decompd reads {VERSION!r})")
    if "layers" not in meta:
        raise bad("__metadata__ has no layers")
    try:
        layer_meta = json.loads(meta["layers"], object_pairs_hook=OrderedDict)
    except ValueError as e:
        raise bad(f"__metadata__ layers is not JSON: {e}") from None
    if not isinstance(layer_meta, Mapping) or not layer_meta:
        raise bad("__metadata__ layers is not a non-empty JSON object")

    # Which layer each tensor belongs to, for the messages below.
    owner = {}
    for lname, lm in layer_meta.items():
        if isinstance(lm, Mapping) and isinstance(lm.get("gram"), str):
            for suffix in (".gram", ".count"):
                owner.setdefault(lm["gram"] + suffix, lname)

    def tensor(name):
        layer = owner.get(name)
        return (f"tensor {name!r} (layer {layer!r})" if layer is not None
                else f"tensor {name!r}")

    # Tensor entries: each well formed, and together tiling the data.
    entries = check_entries(header, data_len, bad, tensor)

    def array(name, dt, shape, off):
        np_dt = _ST_DTYPES[dt][1]
        start = data_start + off[0]
        a = np.frombuffer(buf, dtype=np_dt, count=math.prod(shape),
                          offset=start)
        if start % np_dt.itemsize or not np_dt.isnative:
            a = a.astype(np_dt.newbyteorder("="))
        return a.reshape(shape)

    # Layers: each one's Gram and count, checked.
    layers = OrderedDict()
    grams = OrderedDict()
    used = set()
    for lname, lm in layer_meta.items():
        def lbad(msg):
            return bad(f"layer {lname!r}: {msg}")

        if not lname:
            raise bad("a layer has an empty name")
        if not isinstance(lm, Mapping):
            raise lbad("its entry is not an object")
        key, typ, mshape = lm.get("gram"), lm.get("type"), lm.get("shape")
        if not isinstance(key, str) or not key:
            raise lbad(f"gram {key!r} is not a tensor key")
        if typ not in ("Linear", "Conv2d"):
            raise lbad(f"type {typ!r} is neither Linear nor Conv2d")
        if key in grams:
            if grams[key][2] != typ:
                raise lbad(f"shares {key}.gram with a {grams[key][2]} layer")
            gshape = list(grams[key][0].shape)
            if mshape != gshape:
                raise lbad(f"shape {mshape!r} in the metadata, but "
                           f"{key}.gram is {gshape}")
            layers[lname] = (key, typ)
            continue
        gname, cname = f"{key}.gram", f"{key}.count"
        if gname not in entries:
            raise lbad(f"no tensor {gname}")
        if cname not in entries:
            raise lbad(f"no tensor {cname}")
        dt, shape, off = entries[gname]
        if dt not in ("F64", "F32"):
            raise lbad(f"{gname} is {dt}, not F64 or F32")
        want_ndim = 2 if typ == "Linear" else 3
        if len(shape) != want_ndim:
            raise lbad(f"{gname} has shape {shape}: a {typ} Gram is "
                       f"{'[in, in]' if typ == 'Linear' else '[g, n, n]'}")
        if shape[-1] != shape[-2]:
            raise lbad(f"{gname} has shape {shape}: not square")
        if shape[-1] < 1 or (typ == "Conv2d" and shape[0] < 1):
            raise lbad(f"{gname} has shape {shape}: empty")
        if mshape != shape:
            raise lbad(f"shape {mshape!r} in the metadata, but {gname} is "
                       f"{shape}")
        g = array(gname, dt, shape, off)
        if not np.isfinite(g).all():
            raise lbad(f"{gname} holds non-finite values")
        scale = float(np.abs(g).max()) if g.size else 0.0
        asym = float(np.abs(g - np.swapaxes(g, -1, -2)).max())
        if asym > _SYMMETRY_TOL[dt] * scale:
            raise lbad(f"{gname} is not symmetric (|G - Gᵀ| up to {asym:.3g}"
                       f", max |G| {scale:.3g})")
        if (np.diagonal(g, axis1=-2, axis2=-1) < 0).any():
            raise lbad(f"{gname} has a negative diagonal entry: not a Gram "
                       f"matrix")
        cdt, cshape, coff = entries[cname]
        if cdt != "I64" or cshape != []:
            raise lbad(f"{cname} is {cdt} {cshape}, not an I64 scalar ([])")
        count = int(array(cname, cdt, cshape, coff))
        if count < 1:
            raise lbad(f"{cname} is {count}: at least one sample is needed")
        grams[key] = (torch.from_numpy(g), count, typ)
        used.update((gname, cname))
        layers[lname] = (key, typ)
    for name in entries:
        if name not in used:
            raise bad(f"tensor {name!r} belongs to no layer of the "
                      f"metadata")
    return layers, OrderedDict((k, (g, c)) for k, (g, c, _) in grams.items())


# ---------------------------------------------------------------------------
# Computing Grams


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class _Target:
    """One hooked layer: its name, kind and what its Gram's shape and
    sharing depend on."""

    __slots__ = ("name", "module", "kind", "sig", "shape")

    def __init__(self, name, module):
        self.name = name
        self.module = module
        if is_plain_linear(module):
            self.kind = "Linear"
            n = module.in_features
            self.sig = ("Linear", n)
            self.shape = (n, n)
        else:
            self.kind = "Conv2d"
            kh, kw = _pair(module.kernel_size)
            g = module.groups
            n = (module.in_channels // g) * kh * kw
            self.sig = ("Conv2d", module.in_channels, g, (kh, kw),
                        _pair(module.stride), _pair(module.dilation),
                        tuple(_conv_pads(module)), module.padding_mode)
            self.shape = (g, n, n)


def _conv_pads(conv):
    """[left, right, top, bottom] padding the conv applies (F.pad's
    order), as nn.Conv2d._conv_forward does."""
    if conv.padding_mode != "zeros":
        return list(conv._reversed_padding_repeated_twice)
    pad = conv.padding
    kh, kw = _pair(conv.kernel_size)
    dh, dw = _pair(conv.dilation)
    if pad == "valid":
        return [0, 0, 0, 0]
    if pad == "same":
        out = []
        for d, k in ((dw, kw), (dh, kh)):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return out
    ph, pw = _pair(pad)
    return [pw, pw, ph, ph]


def _linear_gram(x, n, dtype):
    """(Σ xᵀx over x's rows, rows) in `dtype`, in row chunks."""
    rows = x.reshape(-1, n)
    m = rows.shape[0]
    g = torch.zeros(n, n, dtype=dtype, device=x.device)
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for i in range(0, m, step):
        r = rows[i:i + step].to(dtype)
        g.addmm_(r.t(), r)
    return g, m


def _conv_gram(x, conv, pads, dtype):
    """(per-group Gram of the conv's input patches, batch × positions)."""
    if x.dim() == 3:  # unbatched (C, H, W)
        x = x.unsqueeze(0)
    mode = conv.padding_mode
    kh, kw = _pair(conv.kernel_size)
    g = conv.groups
    cg = conv.in_channels // g
    n = cg * kh * kw
    gram = torch.zeros(g, n, n, dtype=dtype, device=x.device)
    N, _, H, W = x.shape
    Hp, Wp = H + pads[2] + pads[3], W + pads[0] + pads[1]
    per_sample = max(1, conv.in_channels * kh * kw * Hp * Wp)
    step = max(1, _CHUNK_ELEMENTS // per_sample)
    rows = 0
    for i in range(0, N, step):
        xi = x[i:i + step].to(dtype)
        if any(pads):
            xi = F.pad(xi, pads, mode="constant" if mode == "zeros" else mode)
        cols = F.unfold(xi, (kh, kw), dilation=_pair(conv.dilation),
                        stride=_pair(conv.stride))  # [b, Cin·kh·kw, L]
        b, _, L = cols.shape
        # [g, b·L, n]: each group's patches as rows.
        p = cols.view(b, g, n, L).permute(1, 0, 3, 2).reshape(g, b * L, n)
        gram.baddbmm_(p.transpose(1, 2), p)
        rows += b * L
    return gram, rows


def _fits(x, target, module):
    """Whether the layer's forward can read `x` (else it raises itself)."""
    if target.kind == "Linear":
        return x.dim() >= 1 and x.shape[-1] == target.shape[0]
    return x.dim() in (3, 4) and x.shape[-3] == module.in_channels


class _Event:
    """One distinct input (tensor object × Gram geometry) in one forward
    call: its Gram, rows, and which layers read it how many times."""

    __slots__ = ("ref", "gram", "rows", "readers")

    def __init__(self, ref, gram, rows):
        self.ref = ref
        self.gram = gram
        self.rows = rows
        self.readers = OrderedDict()


class _Collector:
    """The hooks' state: events of the forward call under way, and the sums
    over finished events keyed by their readers."""

    def __init__(self, targets, dtype):
        self.targets = targets
        self.dtype = dtype
        self.live = {}  # (id(tensor), sig) -> _Event, this forward only
        self.sums = OrderedDict()  # readers (tuple) -> [gram, rows]
        self.skipped = set()

    def hook(self, target):
        def pre_hook(module, inputs):
            x = inputs[0] if inputs else None
            if not isinstance(x, torch.Tensor):
                if target.name not in self.skipped:
                    self.skipped.add(target.name)
                    log.warning("%s: called without a positional input "
                                "tensor; those calls are not calibrated",
                                target.name)
                return None
            if not _fits(x, target, module):
                return None  # the layer's own forward raises
            # Inputs freed since are complete: their Grams join the sums
            # now, so memory holds one Gram per input still alive.
            for k in [k for k, e in self.live.items() if e.ref() is None]:
                self._finish(self.live.pop(k))
            key = (id(x), target.sig)
            ev = self.live.get(key)
            if ev is None:
                if target.kind == "Linear":
                    gram, rows = _linear_gram(x, target.shape[0], self.dtype)
                else:
                    gram, rows = _conv_gram(x, module,
                                            list(target.sig[6]), self.dtype)
                ev = self.live[key] = _Event(weakref.ref(x), gram, rows)
            ev.readers[target.name] = ev.readers.get(target.name, 0) + 1
            return None
        return pre_hook

    def _finish(self, ev):
        readers = tuple(ev.readers.items())
        s = self.sums.get(readers)
        if s is None:
            self.sums[readers] = [ev.gram, ev.rows]
        else:
            s[0] += ev.gram.to(s[0].device)
            s[1] += ev.rows

    def end_forward(self):
        """After each model call: the events are complete."""
        live, self.live = self.live, {}
        for ev in live.values():
            self._finish(ev)

    def result(self):
        """(layers, grams) for a Calibration, in model order."""
        # Per layer: the sums it is in, with its multiplicity in each.
        member = OrderedDict((t.name, []) for t in self.targets)
        for i, readers in enumerate(self.sums):
            for name, times in readers:
                member[name].append((i, times))
        sums = list(self.sums.values())
        kinds = {t.name: t.kind for t in self.targets}
        layers = OrderedDict()
        grams = OrderedDict()
        by_membership = {}
        for name, parts in member.items():
            if not parts:
                continue
            sig = tuple(parts)
            key = by_membership.get(sig)
            if key is None:
                key = by_membership[sig] = name
                gram, rows = None, 0
                for i, times in parts:
                    g, r = sums[i]
                    g = g.to("cpu") * times if times != 1 else g.to("cpu")
                    gram = g if gram is None else gram + g
                    rows += r * times
                # Exactly symmetric: the engine reads one triangle.
                gram = (gram + gram.transpose(-1, -2)) / 2
                grams[key] = (gram.contiguous(), int(rows))
            layers[name] = (key, kinds[name])
        return layers, grams


def _select(refs, layers):
    """[(name, module)] of the decomposable layers, filtered by `layers`
    (names or globs, matched against every name of a module)."""
    found = []
    for ref in refs.values():
        m = ref.module
        if is_plain_conv(m) or is_plain_linear(m):
            found.append(ref)
    if layers is not None:
        pats = [layers] if isinstance(layers, str) else list(layers)
        for p in pats:
            if not isinstance(p, str):
                raise TypeError(f"layers must be names or globs, not "
                                f"{type(p).__name__}")
        chosen = []
        for ref in found:
            names = [n or root_name(ref.module) for n in ref.names]
            if any(fnmatch.fnmatchcase(n, p) for n in names for p in pats):
                chosen.append(ref)
        for p in pats:
            if not any(fnmatch.fnmatchcase(n or root_name(r.module), p)
                       for r in found for n in r.names):
                raise ValueError(f"layers: {p!r} matches no Conv2d or "
                                 f"Linear layer of the model")
        found = chosen
    return [(ref.name or root_name(ref.module), ref.module) for ref in found]


def _call(model, batch):
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(f"a batch must be a tensor, a tuple/list of forward "
                    f"arguments or a dict of keyword arguments, not "
                    f"{type(batch).__name__}")


def calibrate(model, batches, *, layers=None, max_batches=None,
              dtype=torch.float64):
    """The Gram matrices of every decomposable layer's inputs on `batches`.

    model: an nn.Module; its nn.Conv2d and nn.Linear layers (exactly those
      classes) are calibrated. It runs in eval mode under torch.no_grad;
      every module's train/eval flag is restored and the hooks removed
      afterwards, also when a batch raises.
    batches: an iterable of batches: a tensor (model(b)), a tuple or list
      (model(*b)) or a dict (model(**b)), already on the model's device.
    layers: None (all), or names / globs ("blocks.*.attn.*") restricting
      the calibrated layers; a pattern that matches none is a ValueError.
    max_batches: stop after that many batches.
    dtype: torch.float64 (default) or torch.float32, the Grams' dtype (the
      sums are done in it).

    Returns a Calibration. Layers that never ran are absent (a warning
    names them); CalibrationError when no layer ran at all.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not "
                        f"{type(model).__name__}")
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be torch.float64 or torch.float32, not "
                         f"{dtype}")
    if max_batches is not None and (not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer, not "
                         f"{max_batches!r}")
    refs = walk(model)
    chosen = _select(refs, layers)
    if not chosen:
        raise ValueError("the model has no Conv2d or Linear layer to "
                         "calibrate")
    targets = [_Target(name, m) for name, m in chosen]
    coll = _Collector(targets, dtype)

    total = None
    try:
        total = len(batches)
    except TypeError:
        pass
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    reporter = BatchReporter(total)

    modes = [(m, m.training) for m in model.modules()]
    handles = []
    done = samples = 0
    summary = None
    try:
        for t in targets:
            handles.append(t.module.register_forward_pre_hook(
                coll.hook(t)))
        model.eval()
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and done >= max_batches:
                    break
                _call(model, batch)
                coll.end_forward()
                done += 1
                samples += _batch_size(batch)
                reporter.step(done, samples)
        if done == 0:
            raise ValueError("calibrate: no batches")
        layers_out, grams = coll.result()
        if not layers_out:
            raise CalibrationError(
                "calibrate: none of the hooked layers ran in "
                f"{done} batch(es)")
        missing = [t.name for t in targets if t.name not in layers_out]
        if missing:
            log.warning("calibrate: %d layer(s) never ran and have no Gram: "
                        "%s", len(missing), ", ".join(missing[:10]) +
                        (", …" if len(missing) > 10 else ""))
        summary = (f"calibrated {len(layers_out)} layer(s) ({len(grams)} "
                   f"Gram(s)) on {done} batch(es)")
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
        reporter.close(summary)
    return Calibration(layers_out, grams)


def _batch_size(batch):
    """The leading size of a batch's first tensor (for the progress line)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    items = batch.values() if isinstance(batch, Mapping) else batch
    for v in items:
        if isinstance(v, torch.Tensor):
            return int(v.shape[0]) if v.dim() else 1
    return 1
