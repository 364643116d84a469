"""decompd.tensor_decompose — the reference tool's API on decompd's engine.

A training script migrating from Huawei AMCT changes only its import line:

    from decompd.tensor_decompose import auto_decomposition, decompose_network

    net, changes = auto_decomposition(model=net)                        # online
    net, changes = auto_decomposition(model=net, decompose_info_path=p)  # offline 1
    net, changes = decompose_network(model=net, decompose_info_path=p)   # offline 2

This file owns the module surgery around the engine: it hands the live
model's layer spec and its Conv2d and Linear weights (and, when given, a
calibration: decompd.calibration) to libdecomp (decompd._engine), and turns
each decomposed layer into an ``nn.Sequential`` of two modules named NAME.0
and NAME.1, so the state dict gets NAME.0.weight, NAME.1.weight and (with
bias) NAME.1.bias. The pair depends on the info file's ``method``
(README.md, "The decomposition"):

- ``spatial_svd`` (Conv2d, kh, kw > 1): a (kh,1) conv and a (1,kw) conv, in
  the info file's ``order``;
- ``channel_svd`` (any Conv2d): the kh×kw conv Cin → g·R (the original's
  stride, padding, dilation, padding mode and groups, no bias), then a 1×1
  conv g·R → Cout (groups g, the original bias);
- ``svd`` (Linear): Linear in → R (no bias), then Linear R → out (the
  original bias).

Semantics kept from the reference, and the choices made where it is silent:

- The model is changed in place and returned, except when it is itself an
  ``nn.Conv2d`` or ``nn.Linear``: then the argument is left untouched and
  the new ``nn.Sequential`` is returned; ``changes`` is then
  ``{'': ['0', '1']}`` (the returned module's own names) and the info file
  calls the layer "conv" ("linear"). A bare layer that is not decomposed is
  returned as is.
- ``changes`` is exactly ``{name: [name + '.0', name + '.1']}`` over the
  layers that were replaced, in model order.
- Only modules whose class is exactly ``torch.nn.Conv2d`` or
  ``torch.nn.Linear`` are decomposed (see decompd.spec); the rank policy
  decides which of them get cheaper, and its ``types`` whether Linear
  layers are considered at all (default: Conv2d only, so an AMCT script's
  ``changes`` keeps its meaning).
- New parameters keep the original's device, dtype, ``requires_grad`` and
  channels_last memory format; the new modules take the original conv's
  train/eval mode. Weights on a GPU are copied to the CPU for the engine
  (CPU float weights are read in place) and the results copied back. Hooks
  registered on a replaced conv are not carried over (a warning names the
  layer).
- A conv object reachable under several names (shared by two parents) is
  decomposed once; every parent then holds the same new ``nn.Sequential``.
  ``auto_decomposition`` names it by its first name in
  ``model.named_modules()`` order, in ``changes`` and in the info file;
  ``decompose_network`` accepts it under any of its names, and lists in
  ``changes`` the names the info file used.
- ``decompose_network`` changes structure only (new modules keep PyTorch's
  default init; load the saved state dict after it). It checks every layer of
  the info file against the model first — the layer exists, is a plain
  ``nn.Conv2d`` or ``nn.Linear`` as the info file says, has the recorded
  fields, and the recorded new modules are what its method makes — and
  raises ValueError naming the layer and the mismatch (FileNotFoundError for
  a missing file) before changing anything. It reads decompd's info files
  and the reference tool's (the engine's decomp_info_normalize maps both onto
  decompd's).
- Both must run before the optimizer (and DDP) see the parameters.
"""

import errno
import json
import logging
import os
import tempfile
from collections.abc import Mapping

import torch
import torch.nn as nn

from . import _engine
from ._files import write_atomic
from ._progress import Reporter
from .calibration import _as_calibration
from .errors import CalibrationError, DecompError
from .latency import _engine_text as _profile_text
from .spec import (conv_fields, input_sizes, is_decomposable, layer_fields,
                   layer_spec_json, root_name, type_name, walk)

__all__ = ["auto_decomposition", "decompose_network"]

log = logging.getLogger("decompd")

DEFAULT_POLICY = "budget"

_ORDERS = ("vertical_first", "horizontal_first")
_CONV_KEYS = ("in_channels", "out_channels", "kernel_size", "stride",
              "padding", "dilation", "groups", "bias", "padding_mode")
_LINEAR_KEYS = ("in_features", "out_features", "bias")
_KEYS = {"Conv2d": _CONV_KEYS, "Linear": _LINEAR_KEYS}
# method -> the type of layer it applies to
METHODS = {"spatial_svd": "Conv2d", "channel_svd": "Conv2d", "svd": "Linear"}


# ---------------------------------------------------------------------------
# Arguments


def _check_model(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not "
                        f"{type(model).__name__}")


def _service_url(server):
    """The decompd service to run on: `server`, else DECOMPD_URL, else None
    (in-process)."""
    return server if server is not None else (
        os.environ.get("DECOMPD_URL") or None)


def _policy_text(policy):
    if policy is None:
        return DEFAULT_POLICY
    if isinstance(policy, str):
        return policy
    if isinstance(policy, Mapping):
        return json.dumps(dict(policy))
    raise TypeError(f"policy must be a name, a JSON text or a dict, not "
                    f"{type(policy).__name__}")


# ---------------------------------------------------------------------------
# The two new modules of a decomposed layer


def _norm(key, v):
    """A field value in a comparable form (ints as pairs, 'valid' as 0s)."""
    if key in ("kernel_size", "stride", "padding", "dilation"):
        if isinstance(v, str):
            return [0, 0] if v == "valid" else v
        if isinstance(v, (list, tuple)):
            return [int(x) for x in v]
        if isinstance(v, (int, float)):
            return [int(v), int(v)]
    if key == "bias" and v is not None:
        return bool(v)
    return v


def _fmt(v):
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def _derive_pair(conv, rank, order):
    """The spec fields of the two convs replacing `conv` by spatial_svd
    (DESIGN.md, "The decomposition"): each keeps its own axis's stride,
    padding and dilation, the other axis gets 1, 0, 1; only the second has
    the bias."""
    f = conv_fields(conv)
    (kh, kw), (sh, sw), (dh, dw) = f["kernel_size"], f["stride"], f["dilation"]
    pad = f["padding"]
    g = f["groups"]
    vert = {"kernel_size": [kh, 1], "stride": [sh, 1], "dilation": [dh, 1],
            "padding": pad if isinstance(pad, str) else [pad[0], 0]}
    horiz = {"kernel_size": [1, kw], "stride": [1, sw], "dilation": [1, dw],
             "padding": pad if isinstance(pad, str) else [0, pad[1]]}
    first, second = (vert, horiz) if order == "vertical_first" else (horiz,
                                                                     vert)
    first.update(in_channels=f["in_channels"], out_channels=g * rank,
                 groups=g, bias=False, padding_mode=f["padding_mode"])
    second.update(in_channels=g * rank, out_channels=f["out_channels"],
                  groups=g, bias=f["bias"], padding_mode=f["padding_mode"])
    return [first, second]


def _derive_channel_pair(conv, rank):
    """channel_svd (README.md, "The decomposition"): the kh×kw conv
    Cin → g·R with the original's stride, padding, dilation, padding mode
    and groups and no bias, then the 1×1 conv g·R → Cout with the original
    bias."""
    f = conv_fields(conv)
    g = f["groups"]
    first = dict(f, out_channels=g * rank, bias=False)
    second = {"in_channels": g * rank, "out_channels": f["out_channels"],
              "kernel_size": [1, 1], "stride": [1, 1], "padding": [0, 0],
              "dilation": [1, 1], "groups": g, "bias": f["bias"],
              "padding_mode": "zeros"}
    return [first, second]


def _derive_linear_pair(linear, rank):
    """svd: Linear in → R without bias, then Linear R → out with the
    original bias."""
    return [{"in_features": int(linear.in_features), "out_features": rank,
             "bias": False},
            {"in_features": rank, "out_features": int(linear.out_features),
             "bias": linear.bias is not None}]


def _method(layer):
    """The info-file layer's method (AMCT's files have none: spatial)."""
    return layer.get("method") or "spatial_svd"


def _rank_of(name, layer, modules, module, method):
    rank = layer.get("rank")
    if rank is None and modules:
        if method == "svd":
            rank = modules[0].get("out_features")
        elif isinstance(modules[0].get("out_channels"), int):
            rank = modules[0]["out_channels"] // max(module.groups, 1)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"{name}: the info file gives no usable rank "
                         f"({rank!r})")
    return rank


def _plan(name, layer, module):
    """[(type, fields), (type, fields)] of the two modules replacing
    `module` for info-file layer entry `layer`; ValueError naming the layer
    when the entry does not fit."""
    method = _method(layer)
    kind = METHODS.get(method)
    if kind is None:
        raise ValueError(f"{name}: the info file's method {method!r} is not "
                         f"one decompd knows ({', '.join(METHODS)})")
    if type_name(module) != kind:
        raise ValueError(f"{name}: {method} decomposes a {kind}, the "
                         f"model's layer is a {type_name(module)}")
    modules = layer.get("modules") or []
    if modules and len(modules) != 2:
        raise ValueError(f"{name}: the info file lists {len(modules)} new "
                         f"modules, expected 2")
    if any(not isinstance(m, Mapping) for m in modules):
        raise ValueError(f"{name}: the info file's new modules are not "
                         f"objects")
    rank = _rank_of(name, layer, modules, module, method)
    if method == "spatial_svd":
        order = layer.get("order")
        if order is None and modules:
            k = _norm("kernel_size", modules[0].get("kernel_size"))
            if isinstance(k, list) and len(k) == 2:
                order = "vertical_first" if k[1] == 1 else "horizontal_first"
        if order not in _ORDERS:
            raise ValueError(f"{name}: the info file gives no usable order "
                             f"({order!r})")
        plan = _derive_pair(module, rank, order)
        how = f"rank {rank} {order}"
    elif method == "channel_svd":
        plan = _derive_channel_pair(module, rank)
        how = f"channel_svd at rank {rank}"
    else:
        plan = _derive_linear_pair(module, rank)
        how = f"svd at rank {rank}"
    for i, (want, got) in enumerate(zip(plan, modules)):
        typ = got.get("type")
        if typ is not None and typ != kind:
            raise ValueError(f"{name}: the info file's {_sub(name, i)} is a "
                             f"{typ}, but {method} makes a {kind}")
        for key in _KEYS[kind]:
            if key not in got or got[key] is None:
                continue
            if _norm(key, got[key]) != _norm(key, want[key]):
                raise ValueError(
                    f"{name}: the info file's {_sub(name, i)} has {key} "
                    f"{_fmt(got[key])}, but {how} on the model's "
                    f"{kind} gives {_fmt(want[key])}")
    return [(kind, p) for p in plan]


def _conv_from_fields(fields, device, dtype, empty):
    f = dict(fields)
    pad = f["padding"]
    kwargs = dict(
        in_channels=f["in_channels"], out_channels=f["out_channels"],
        kernel_size=tuple(f["kernel_size"]), stride=tuple(f["stride"]),
        padding=pad if isinstance(pad, str) else tuple(pad),
        dilation=tuple(f["dilation"]), groups=f["groups"], bias=f["bias"],
        padding_mode=f["padding_mode"], device=device, dtype=dtype)
    if empty:
        # The engine's weights overwrite the init: skip it (large layers).
        return torch.nn.utils.skip_init(nn.Conv2d, **kwargs)
    return nn.Conv2d(**kwargs)


def _linear_from_fields(fields, device, dtype, empty):
    kwargs = dict(in_features=fields["in_features"],
                  out_features=fields["out_features"], bias=fields["bias"],
                  device=device, dtype=dtype)
    if empty:
        return torch.nn.utils.skip_init(nn.Linear, **kwargs)
    return nn.Linear(**kwargs)


_BUILDERS = {"Conv2d": _conv_from_fields, "Linear": _linear_from_fields}


def _make_pair(name, module, plan, empty):
    """The nn.Sequential replacing `module`, on its device and dtype, with
    its requires_grad flags, train/eval mode and (for a conv, channels_last)
    memory format."""
    w = module.weight
    try:
        first, second = (_BUILDERS[kind](p, w.device, w.dtype, empty)
                         for kind, p in plan)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: cannot build its decomposed layers: {e}") \
            from None
    first.weight.requires_grad_(w.requires_grad)
    second.weight.requires_grad_(w.requires_grad)
    if module.bias is not None:
        second.bias.requires_grad_(module.bias.requires_grad)
    seq = nn.Sequential(first, second)
    if (w.dim() == 4 and not w.is_contiguous()
            and w.is_contiguous(memory_format=torch.channels_last)):
        seq = seq.to(memory_format=torch.channels_last)
    seq.train(module.training)
    return seq


def _check_original(name, original, module):
    """Compare an info file's record of the original layer with the live
    module; ValueError naming the layer and the first mismatch."""
    if not original:
        return
    kind = type_name(module)
    typ = original.get("type", "Conv2d")
    if typ != kind:
        raise ValueError(f"{name}: the info file records a {typ}, the model "
                         f"has a {kind}")
    live = layer_fields(module)
    for key in _KEYS[kind]:
        if key not in original or original[key] is None:
            continue
        if _norm(key, original[key]) != _norm(key, live[key]):
            raise ValueError(
                f"{name}: {key} is {_fmt(live[key])} in the model but "
                f"{_fmt(original[key])} in the decompose info file")


def _warn_hooks(name, module):
    if (module._forward_hooks or module._forward_pre_hooks
            or module._backward_hooks):
        log.warning("%s: hooks registered on the layer are not carried over "
                    "to its decomposed replacement", name)


def _replace(model, jobs):
    """Put each new Sequential in every slot of its layer; return the new
    root when the root itself was replaced."""
    root = model
    for ref, seq in jobs:
        _warn_hooks(ref.name, ref.module)
        if not ref.slots:  # the root (a bare layer): argument untouched
            root = seq
        for parent, attr in ref.slots:
            parent._modules[attr] = seq
    return root


def _sub(name, i):
    return f"{name}.{i}" if name else str(i)


# ---------------------------------------------------------------------------
# Info files


def _write_text_atomic(path, text):
    if not text.endswith("\n"):
        text += "\n"
    write_atomic(path, [text.encode("utf-8")], ".decompose_info.")


def _read_info(path):
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, "decompose info file not found", path) from None
    try:
        normalized = _engine.normalize_info(text)
    except DecompError as e:
        raise type(e)(e.code, e.code_name, f"{path}: {e.detail}") from None
    return json.loads(normalized)


def _decomposed_layers(info):
    """The entries of a (normalized) info file's "layers" that were
    decomposed (every method; _plan refuses one it does not know)."""
    return [layer for layer in info.get("layers", [])
            if not layer.get("skipped")]


def _check_calibration(cal, refs, engine_name):
    """Every calibrated layer is a decomposable layer of the model with the
    Gram's type and shape; CalibrationError naming the layer otherwise."""
    layers = {}
    for ref in refs.values():
        if is_decomposable(ref.module):
            layers[engine_name(ref)] = ref.module
    for name in cal.layers:
        m = layers.get(name)
        if m is None:
            raise CalibrationError(
                f"calibration layer {name!r}: no Conv2d or Linear of that "
                f"name in the model (calibrated on another model?)")
        kind = type_name(m)
        if cal.layer_type(name) != kind:
            raise CalibrationError(
                f"calibration layer {name!r}: a {cal.layer_type(name)} Gram, "
                f"but the model's layer is a {kind}")
        if kind == "Linear":
            want = [m.in_features, m.in_features]
        else:
            kh, kw = m.kernel_size
            n = (m.in_channels // m.groups) * kh * kw
            want = [m.groups, n, n]
        got = list(cal.gram(name).shape)
        if got != want:
            raise CalibrationError(
                f"calibration layer {name!r}: Gram of shape {got}, the "
                f"model's {kind} needs {want}")


# ---------------------------------------------------------------------------
# The API


def auto_decomposition(model, decompose_info_path=None, *, policy=None,
                       server=None, example_input=None, calibration=None,
                       profile=None):
    """Decompose the model's Conv2d (and, when the policy says so, Linear)
    layers with the in-process engine.

    model: an nn.Module, changed in place (an nn.Conv2d or nn.Linear is left
      untouched and its replacement returned).
    decompose_info_path: where to write decompose_info.json (offline step 1);
      its folder is created. None: no file.
    policy: the rank policy, a name ("budget", "amct", "energy", …) or a dict
      / JSON text ({"name": "energy", "energy": 0.95}); default "budget"
      (a 2x conv MAC reduction over the eligible convs). Its "types"
      (default ["Conv2d"]) adds "Linear" layers; its "methods" chooses
      between "spatial" and "channel" for convs.
    server: a decompd service URL (default DECOMPD_URL): the model's state
      dict and spec are sent there and the result pulled back
      (decompd.client.Client.decompose), giving the same bytes as the
      in-process engine; unreachable: ConnectionError
      (decompd.client.ConnectError), never a silent fallback.
    example_input: optional (decompd's addition to the reference API): a
      tensor, or a tuple of forward arguments, run once through the model
      (eval mode, no grad, modes restored) to record each conv's input size,
      so the policy weighs layers by their whole-layer MACs. Without it, cost
      is counted per output pixel of each layer.
    calibration: optional, a decompd.Calibration (decompd.calibrate) or the
      path of a calibration file: layers with a Gram are decomposed to
      minimize their output error on that data (whitened SVD: channel_svd
      or svd), and the policy reads the whitened spectrum. Every calibrated
      layer must be one of the model's (CalibrationError otherwise).
      With server=, it is attached to the model on the service and the
      job runs with it.
    profile: optional, a decompd.Profile (decompd.profile) or the path of a
      profile file: each layer's measured time and its candidates' times
      over a grid of ranks on the target device. With it the budget takes
      "latency_reduction" (a target for the whole model), and every
      policy leaves alone a layer the profile says would get slower
      ("max_slowdown", default 1.0). The engine checks it against the
      model: a layer the model lacks, another weight shape, a bad time or
      an empty grid raise ValueError naming the layer. With server=, it is
      attached to the model on the service (checked there the same way)
      and the job runs with it.

    Returns (model, changes) with changes {name: [name.0, name.1], …}.
    Raises ValueError (decompd.DecompValueError) for a bad policy or input,
    RuntimeError for engine failures.
    """
    _check_model(model)
    policy_text = _policy_text(policy)
    url = _service_url(server)
    cal = _as_calibration(calibration) if calibration is not None else None
    prof = _profile_text(profile) if profile is not None else None
    if url:
        from .client import Client
        if cal is not None:  # checked here first, as in-process
            _check_calibration(cal, walk(model), lambda r: r.name or
                               root_name(r.module))
        with tempfile.TemporaryDirectory(prefix="decompd-cal-") as tmp:
            if cal is None:
                cal_file = None
            elif isinstance(calibration, (str, bytes, os.PathLike)):
                cal_file = os.fsdecode(calibration)  # a path, streamed
            else:  # a Calibration in memory: streamed from a file
                cal_file = os.path.join(tmp, "calibration.safetensors")
                cal.save(cal_file)
            return Client(url).decompose(model, decompose_info_path,
                                         policy=policy_text,
                                         example_input=example_input,
                                         calibration=cal_file,
                                         profile=prof and prof[0])

    refs = walk(model)
    layers = [ref for ref in refs.values() if is_decomposable(ref.module)]

    def ename_of(ref):
        return ref.name or root_name(ref.module)

    if cal is not None:
        _check_calibration(cal, refs, ename_of)
    sizes = (input_sizes(model, example_input)
             if example_input is not None else None)
    if not layers:
        log.info("no Conv2d or Linear layers to decompose")
    tensors = []
    wanted = set()
    for ref in layers:
        m = ref.module
        ename = ename_of(ref)
        if m.weight.device.type == "meta":
            raise ValueError(f"{ename}: its weights are on the meta device "
                             f"and hold no data to decompose")
        tensors.append((f"{ename}.weight", m.weight))
        if m.bias is not None:
            tensors.append((f"{ename}.bias", m.bias))
        for suffix in ("0.weight", "1.weight", "1.bias"):
            wanted.add(f"{ename}.{suffix}")
    # The spec names a bare root layer as the engine does ("conv"/"linear").
    root_ename = root_name(model)

    reporter = Reporter()
    try:
        with torch.no_grad():
            weights, info_text = _engine.decompose(
                tensors,
                layer_spec_json(refs, lambda n: n or root_ename, sizes),
                policy_text, progress=reporter, want=wanted.__contains__,
                calibration=cal, profile=prof)
    finally:
        reporter.close()
    info = json.loads(info_text)

    by_name = {ename_of(ref): ref for ref in layers}
    jobs = []
    for layer in _decomposed_layers(info):
        ename = layer["name"]
        ref = by_name.get(ename)
        if ref is None:
            raise RuntimeError(f"{ename}: the engine decomposed a layer the "
                               f"model has no plain Conv2d or Linear for")
        name = ref.name
        module = ref.module
        plan = _plan(name, layer, module)
        seq = _make_pair(name, module, plan, empty=True)
        with torch.no_grad():
            for i, part in enumerate(seq):
                for pname in ("weight", "bias"):
                    param = getattr(part, pname)
                    if param is None:
                        continue
                    key = f"{ename}.{i}.{pname}"
                    src = weights.get(key)
                    if src is None or tuple(src.shape) != tuple(param.shape):
                        got = "missing" if src is None else list(src.shape)
                        raise RuntimeError(
                            f"{name}: the engine returned {key} {got}, the "
                            f"new {type(part).__name__} needs "
                            f"{list(param.shape)}")
                    param.copy_(src)
        jobs.append((ref, seq))

    # changes in model order (the spec's order, which the engine keeps).
    order = {ref.name: i for i, ref in enumerate(layers)}
    jobs.sort(key=lambda j: order[j[0].name])
    changes = {ref.name: [_sub(ref.name, 0), _sub(ref.name, 1)]
               for ref, _ in jobs}

    if decompose_info_path is not None:
        _write_text_atomic(decompose_info_path, info_text)
    result = _replace(model, jobs)
    return result, changes


def _already_decomposed(m):
    return (isinstance(m, nn.Sequential) and len(m) == 2
            and (all(type(x) is nn.Conv2d for x in m)
                 or all(type(x) is nn.Linear for x in m)))


def decompose_network(model, decompose_info_path):
    """Give the model the structure recorded in a decompose info file.

    Each listed layer becomes an nn.Sequential of two nn.Conv2d
    (spatial_svd, channel_svd) or two nn.Linear (svd) with PyTorch's default
    init; load the saved state dict after this call. Reads decompd's info
    files and the reference tool's. Every layer is checked before anything
    changes: ValueError names the layer and the mismatch, FileNotFoundError a
    missing file.

    Returns (model, changes) with changes {name: [name.0, name.1], …}; the
    model is changed in place (an nn.Conv2d or nn.Linear is left untouched
    and its replacement returned).
    """
    _check_model(model)
    info = _read_info(decompose_info_path)

    refs = walk(model)
    by_name = {}
    for ref in refs.values():
        for n in ref.names:
            by_name.setdefault(n, ref)
    if is_decomposable(model):
        # A bare layer has no children: its engine name cannot collide.
        by_name[root_name(model)] = refs[id(model)]

    jobs = []
    built = {}
    changes = {}
    for layer in _decomposed_layers(info):
        name = layer.get("name")
        if not isinstance(name, str):
            raise ValueError(f"decompose info file {decompose_info_path}: a "
                             f"layer without a name")
        ref = by_name.get(name)
        if ref is None:
            raise ValueError(f"{name}: no layer of that name in the model")
        if ref.module is model:
            name = ""
        m = ref.module
        original = layer.get("original") or {}
        want = METHODS.get(_method(layer)) or original.get("type", "Conv2d")
        if want not in _KEYS:
            want = "Conv2d"
        if not is_decomposable(m) or type_name(m) != want:
            hint = " (already decomposed?)" if _already_decomposed(m) else ""
            raise ValueError(f"{name}: the model's layer is a {type_name(m)}"
                             f", not a {want}{hint}")
        _check_original(name, original, m)
        plan = _plan(name, layer, m)
        if id(m) in built:
            if built[id(m)][1] != plan:
                raise ValueError(f"{name}: the same layer as "
                                 f"{built[id(m)][0]} in the model, but the "
                                 f"info file decomposes it differently")
        else:
            seq = _make_pair(name, m, plan, empty=False)
            built[id(m)] = (name, plan)
            jobs.append((ref, seq))
        changes[name] = [_sub(name, 0), _sub(name, 1)]

    result = _replace(model, jobs)
    for name in changes:
        log.info("%s: rebuilt as %s", name, " + ".join(changes[name]))
    return result, changes
