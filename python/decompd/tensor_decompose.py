"""decompd.tensor_decompose — the reference tool's API on decompd's engine.

A training script migrating from Huawei AMCT changes only its import line:

    from decompd.tensor_decompose import auto_decomposition, decompose_network

    net, changes = auto_decomposition(model=net)                        # online
    net, changes = auto_decomposition(model=net, decompose_info_path=p)  # offline 1
    net, changes = decompose_network(model=net, decompose_info_path=p)   # offline 2

This file owns the module surgery around the engine: it hands the live
model's layer spec and conv weights to libdecomp (decompd._engine), and turns
each decomposed conv into an ``nn.Sequential`` of two ``nn.Conv2d`` named
NAME.0 and NAME.1, so the state dict gets NAME.0.weight, NAME.1.weight and
(with bias) NAME.1.bias.

Semantics kept from the reference, and the choices made where it is silent:

- The model is changed in place and returned, except when it is itself an
  ``nn.Conv2d``: then the argument is left untouched and the new
  ``nn.Sequential`` is returned; ``changes`` is then ``{'': ['0', '1']}``
  (the returned module's own names) and the info file calls the layer
  "conv". A bare conv that is not decomposed is returned as is.
- ``changes`` is exactly ``{name: [name + '.0', name + '.1']}`` over the
  convs that were replaced, in model order.
- Only modules whose class is exactly ``torch.nn.Conv2d`` are decomposed
  (see decompd.spec); the rank policy decides which of them get cheaper.
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
- ``decompose_network`` changes structure only (new convs keep PyTorch's
  default init; load the saved state dict after it). It checks every layer of
  the info file against the model first — the layer exists, is a plain
  ``nn.Conv2d``, has the recorded fields — and raises ValueError naming the
  layer and the mismatch (FileNotFoundError for a missing file) before
  changing anything. It reads decompd's info files and the reference tool's
  (the engine's decomp_info_normalize maps both onto decompd's).
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
from ._progress import Reporter
from .errors import DecompError
from .spec import (conv_fields, input_sizes, is_plain_conv, layer_spec_json,
                   type_name, walk)

__all__ = ["auto_decomposition", "decompose_network"]

log = logging.getLogger("decompd")

DEFAULT_POLICY = "budget"

_ORDERS = ("vertical_first", "horizontal_first")
_CONV_KEYS = ("in_channels", "out_channels", "kernel_size", "stride",
              "padding", "dilation", "groups", "bias", "padding_mode")


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
# The two new convs of a decomposed layer


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
    """The spec fields of the two convs replacing `conv` (DESIGN.md, "The
    decomposition"): each keeps its own axis's stride, padding and dilation,
    the other axis gets 1, 0, 1; only the second has the bias."""
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


def _plan(name, layer, conv):
    """The two convs' fields for info-file layer entry `layer` on the live
    `conv`; ValueError naming the layer when the entry does not fit."""
    modules = layer.get("modules") or []
    if modules and len(modules) != 2:
        raise ValueError(f"{name}: the info file lists {len(modules)} new "
                         f"modules, expected 2")
    order = layer.get("order")
    if order is None and modules:
        k = _norm("kernel_size", modules[0].get("kernel_size"))
        if isinstance(k, list) and len(k) == 2:
            order = "vertical_first" if k[1] == 1 else "horizontal_first"
    if order not in _ORDERS:
        raise ValueError(f"{name}: the info file gives no usable order "
                         f"({order!r})")
    rank = layer.get("rank")
    if rank is None and modules and "out_channels" in modules[0]:
        rank = modules[0]["out_channels"] // max(conv.groups, 1)
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{name}: the info file gives no usable rank "
                         f"({rank!r})")
    plan = _derive_pair(conv, rank, order)
    for i, (want, got) in enumerate(zip(plan, modules)):
        for key in _CONV_KEYS:
            if key not in got or got[key] is None:
                continue
            if _norm(key, got[key]) != _norm(key, want[key]):
                raise ValueError(
                    f"{name}: the info file's {name}.{i} has {key} "
                    f"{_fmt(got[key])}, but rank {rank} {order} on the "
                    f"model's conv gives {_fmt(want[key])}")
    return plan


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


def _make_pair(name, conv, plan, empty):
    """The nn.Sequential replacing `conv`, on its device and dtype, with its
    requires_grad flags, train/eval mode and (channels_last) memory
    format."""
    w = conv.weight
    try:
        first, second = (_conv_from_fields(p, w.device, w.dtype, empty)
                         for p in plan)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: cannot build its decomposed convs: {e}") \
            from None
    first.weight.requires_grad_(w.requires_grad)
    second.weight.requires_grad_(w.requires_grad)
    if conv.bias is not None:
        second.bias.requires_grad_(conv.bias.requires_grad)
    seq = nn.Sequential(first, second)
    if (w.dim() == 4 and not w.is_contiguous()
            and w.is_contiguous(memory_format=torch.channels_last)):
        seq = seq.to(memory_format=torch.channels_last)
    seq.train(conv.training)
    return seq


def _check_original(name, original, conv):
    """Compare an info file's record of the original layer with the live
    conv; ValueError naming the layer and the first mismatch."""
    if not original:
        return
    typ = original.get("type", "Conv2d")
    if typ != "Conv2d":
        raise ValueError(f"{name}: the info file records a {typ}, the model "
                         f"has a Conv2d")
    live = conv_fields(conv)
    for key in _CONV_KEYS:
        if key not in original or original[key] is None:
            continue
        if _norm(key, original[key]) != _norm(key, live[key]):
            raise ValueError(
                f"{name}: {key} is {_fmt(live[key])} in the model but "
                f"{_fmt(original[key])} in the decompose info file")


def _warn_hooks(name, conv):
    if (conv._forward_hooks or conv._forward_pre_hooks
            or conv._backward_hooks):
        log.warning("%s: hooks registered on the conv are not carried over "
                    "to its decomposed replacement", name)


def _replace(model, jobs):
    """Put each new Sequential in every slot of its conv; return the new
    root when the root itself was replaced."""
    root = model
    for ref, seq in jobs:
        _warn_hooks(ref.name, ref.module)
        if not ref.slots:  # the root (a bare Conv2d): argument untouched
            root = seq
        for parent, attr in ref.slots:
            parent._modules[attr] = seq
    return root


def _sub(name, i):
    return f"{name}.{i}" if name else str(i)


# The engine wants non-empty layer names: a bare Conv2d (the root, named ""
# in `changes`) is called ROOT_NAME in the spec and the info file. It has no
# children, so the name cannot collide.
ROOT_NAME = "conv"


def _engine_name(name):
    return name or ROOT_NAME


# ---------------------------------------------------------------------------
# Info files


def _write_text_atomic(path, text):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".decompose_info.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if not text.endswith("\n"):
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
    decomposed."""
    out = []
    for layer in info.get("layers", []):
        if layer.get("skipped") or layer.get("method", "spatial_svd") not in (
                "spatial_svd",):
            continue
        out.append(layer)
    return out


# ---------------------------------------------------------------------------
# The API


def auto_decomposition(model, decompose_info_path=None, *, policy=None,
                       server=None, example_input=None):
    """Decompose the model's Conv2d layers with the in-process engine.

    model: an nn.Module, changed in place (an nn.Conv2d is left untouched and
      its replacement returned).
    decompose_info_path: where to write decompose_info.json (offline step 1);
      its folder is created. None: no file.
    policy: the rank policy, a name ("budget", "amct", "energy", …) or a dict
      / JSON text ({"name": "energy", "energy": 0.95}); default "budget"
      (a 2x conv MAC reduction over the eligible convs).
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

    Returns (model, changes) with changes {name: [name.0, name.1], …}.
    Raises ValueError (decompd.DecompValueError) for a bad policy or input,
    RuntimeError for engine failures.
    """
    _check_model(model)
    policy_text = _policy_text(policy)
    url = _service_url(server)
    if url:
        from .client import Client
        return Client(url).decompose(model, decompose_info_path,
                                     policy=policy_text,
                                     example_input=example_input)

    refs = walk(model)
    convs = [ref for ref in refs.values() if is_plain_conv(ref.module)]
    sizes = (input_sizes(model, example_input)
             if example_input is not None else None)
    if not convs:
        log.info("no Conv2d layers to decompose")
    tensors = []
    for ref in convs:
        conv = ref.module
        if conv.weight.device.type == "meta":
            raise ValueError(f"{ref.name or ROOT_NAME}: its weights are on "
                             f"the meta device and hold no data to decompose")
        ename = _engine_name(ref.name)
        tensors.append((f"{ename}.weight", conv.weight))
        if conv.bias is not None:
            tensors.append((f"{ename}.bias", conv.bias))
    wanted = set()
    for ref in convs:
        for suffix in ("0.weight", "1.weight", "1.bias"):
            wanted.add(f"{_engine_name(ref.name)}.{suffix}")

    reporter = Reporter()
    try:
        with torch.no_grad():
            weights, info_text = _engine.decompose(
                tensors, layer_spec_json(refs, _engine_name, sizes),
                policy_text,
                progress=reporter, want=wanted.__contains__)
    finally:
        reporter.close()
    info = json.loads(info_text)

    by_name = {_engine_name(ref.name): ref for ref in convs}
    jobs = []
    changes = {}
    for layer in _decomposed_layers(info):
        ename = layer["name"]
        ref = by_name.get(ename)
        if ref is None:
            raise RuntimeError(f"{ename}: the engine decomposed a layer the "
                               f"model has no plain Conv2d for")
        name = ref.name
        conv = ref.module
        plan = _plan(name, layer, conv)
        seq = _make_pair(name, conv, plan, empty=True)
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
                            f"new conv needs {list(param.shape)}")
                    param.copy_(src)
        jobs.append((ref, seq))

    # changes in model order (the spec's order, which the engine keeps).
    order = {ref.name: i for i, ref in enumerate(convs)}
    jobs.sort(key=lambda j: order[j[0].name])
    changes = {ref.name: [_sub(ref.name, 0), _sub(ref.name, 1)]
               for ref, _ in jobs}

    if decompose_info_path is not None:
        _write_text_atomic(decompose_info_path, info_text)
    result = _replace(model, jobs)
    return result, changes


def decompose_network(model, decompose_info_path):
    """Give the model the structure recorded in a decompose info file.

    Each listed conv becomes an nn.Sequential of two nn.Conv2d with PyTorch's
    default init; load the saved state dict after this call. Reads decompd's
    info files and the reference tool's. Every layer is checked before
    anything changes: ValueError names the layer and the mismatch,
    FileNotFoundError a missing file.

    Returns (model, changes) with changes {name: [name.0, name.1], …}; the
    model is changed in place (an nn.Conv2d is left untouched and its
    replacement returned).
    """
    _check_model(model)
    info = _read_info(decompose_info_path)

    refs = walk(model)
    by_name = {}
    for ref in refs.values():
        for n in ref.names:
            by_name.setdefault(n, ref)
    if is_plain_conv(model):
        by_name[ROOT_NAME] = refs[id(model)]  # a bare conv has no children

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
        if not is_plain_conv(m):
            hint = ""
            if (isinstance(m, nn.Sequential) and len(m) == 2
                    and all(type(x) is nn.Conv2d for x in m)):
                hint = " (already decomposed?)"
            raise ValueError(f"{name}: the model's layer is a {type_name(m)}"
                             f", not a Conv2d{hint}")
        _check_original(name, layer.get("original"), m)
        plan = _plan(name, layer, m)
        if id(m) in built:
            if built[id(m)][1] != plan:
                raise ValueError(f"{name}: the same conv as "
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
