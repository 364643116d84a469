"""Helpers of the TorchScript intake tests: run the reader and the C API
driver, read safetensors independently (JSON header + torch.frombuffer), and
make the layer spec of a live module the way python/decompd/spec.py does."""

import json
import os
import struct
import subprocess
from collections import OrderedDict

import torch
import torch.nn as nn

BUILD = os.environ.get("DECOMPD_BUILD_DIR", "build")
READER = os.path.join(BUILD, "src", "torchscript", "decompd-ts-reader")
DUMP = os.path.join(BUILD, "tests", "torchscript", "ts_dump")
DECOMPCTL = os.path.join(BUILD, "src", "cli", "decompctl")

DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """OrderedDict name -> tensor, in header order, checking that the data
    offsets tile the data section in that same order."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n], object_pairs_hook=OrderedDict)
    data = blob[8 + n:]
    out = OrderedDict()
    pos = 0
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        assert b == pos, f"{name}: offsets out of order"
        pos = end
        dt = DTYPES[e["dtype"]]
        raw = bytearray(data[b:end])
        t = (torch.frombuffer(raw, dtype=dt) if raw
             else torch.empty(0, dtype=dt))
        out[name] = t.reshape(e["shape"])
    assert pos == len(data), "data section not tiled"
    return out


def state_dict(model):
    """model.state_dict() under the names the intake gives: a bare Conv2d's
    tensors are "conv.weight"/"conv.bias"."""
    sd = model.state_dict()
    if type(model) is nn.Conv2d:
        return {f"conv.{k}": v for k, v in sd.items()}
    return sd


def as_bytes(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_tensors(got, want):
    """Same names in the same order, same dtypes, shapes and bytes."""
    assert list(got) == list(want)
    for k in want:
        w = want[k].detach()
        assert got[k].dtype == w.dtype, k
        assert list(got[k].shape) == list(w.shape), k
        assert as_bytes(got[k]) == as_bytes(w), f"{k}: values differ"


def _pair(v):
    if isinstance(v, (tuple, list)):
        return [int(x) for x in v]
    return [int(v), int(v)]


def spec_from_module(model):
    """The layer spec of a live module, written here independently of the
    Python package: each module holding parameters of its own, once, under
    its first name; plain nn.Conv2d and nn.Linear with their fields, others by
    class name."""
    layers = []
    for name, m in model.named_modules():
        if not any(p is not None for p in m._parameters.values()):
            continue
        plain = type(m) is nn.Conv2d and isinstance(
            m._parameters.get("weight"), nn.Parameter)
        if name == "":
            # The engine names every layer: a bare conv is "conv", another
            # root holding parameters is left out.
            if not plain:
                continue
            name = "conv"
        if plain:
            pad = m.padding if isinstance(m.padding, str) else _pair(m.padding)
            layers.append({
                "name": name, "type": "Conv2d",
                "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride),
                "padding": pad, "dilation": _pair(m.dilation),
                "groups": m.groups, "bias": m.bias is not None,
                "padding_mode": m.padding_mode,
            })
        elif type(m) is nn.Linear and isinstance(
                m._parameters.get("weight"), nn.Parameter):
            layers.append({"name": name, "type": "Linear",
                           "in_features": m.in_features,
                           "out_features": m.out_features,
                           "bias": m.bias is not None})
        else:
            cls = type(m)
            t = cls.__name__
            if t == "Conv2d":
                t = ("Conv2d(weight reparametrized)" if cls is nn.Conv2d
                     else f"{cls.__module__}.{cls.__qualname__}")
            layers.append({"name": name, "type": t})
    return {"layers": layers}


def package_spec(model):
    """python/decompd's spec of `model`, or None when the package cannot be
    imported here."""
    try:
        from decompd import spec as dspec
    except Exception:  # the package is optional for these tests
        return None
    spec = dspec.layer_spec(dspec.walk(model))
    layers = []
    for layer in spec["layers"]:  # the root rule of spec_from_module
        if layer["name"] == "":
            if layer["type"] != "Conv2d":
                continue
            layer = dict(layer, name="conv")
        layers.append(layer)
    return {"layers": layers}


def run_reader(archive, outdir):
    os.makedirs(outdir, exist_ok=True)
    return subprocess.run([READER, str(archive), str(outdir)],
                          capture_output=True, text=True, timeout=300)


def run_dump(archive, outdir, time=None, memory_mib=None, env=None,
             timeout=300, cancel_after=None, decompose=None):
    """Read `archive` through decomp_torchscript_read (tests/ts_dump); the
    driver's one JSON line as a dict."""
    os.makedirs(outdir, exist_ok=True)
    args = [DUMP, str(archive), str(outdir)]
    if time:
        args += ["--time", str(time)]
    if memory_mib:
        args += ["--memory", str(memory_mib)]
    if cancel_after:
        args += ["--cancel-after", str(cancel_after)]
    if decompose:
        args += ["--decompose", decompose]
    e = dict(os.environ)
    e.setdefault("DECOMPD_TS_READER", READER)
    e.update(env or {})
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                       env=e)
    assert p.returncode == 0, f"ts_dump died: {p.returncode} {p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def canonical_spec(spec, tmpdir):
    """The engine's canonical JSON of a spec dict (decomp_spec_to_json)."""
    path = os.path.join(str(tmpdir), "canon-in.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    p = subprocess.run([DUMP, "--canon", path], capture_output=True,
                       text=True, check=True)
    return json.loads(p.stdout)
