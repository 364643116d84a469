#!/usr/bin/env python3
"""Write the seed corpora of the weight-format fuzz targets (small files, a
few KB each) into tests/fuzz/corpus/{pth,safetensors}/. Run with the
system python (real PyTorch 1.13):  /usr/bin/python3 tests/fuzz/make-seeds.py
The files are checked in; rerun only to change them."""
import collections
import json
import os
import struct

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
pth = os.path.join(here, "corpus", "pth")
st = os.path.join(here, "corpus", "safetensors")
os.makedirs(pth, exist_ok=True)
os.makedirs(st, exist_ok=True)

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
torch.save(net.state_dict(), os.path.join(pth, "conv_bn.pth"))
torch.save(net.half().state_dict(), os.path.join(pth, "conv_bn_half.pth"))
torch.save(net.state_dict(), os.path.join(pth, "protocol4.pth"), pickle_protocol=4)

base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
views = collections.OrderedDict(
    base=base, t=base.t(), col=base[:, 1], block=base[1:, 2:],
    bcast=torch.ones(2, 1).expand(2, 3))
torch.save(views, os.path.join(pth, "views.pth"))

dtypes = collections.OrderedDict(
    bf16=torch.ones(2, dtype=torch.bfloat16), f64=torch.ones(2, dtype=torch.float64),
    i64=torch.tensor([1, -1]), i32=torch.tensor([1], dtype=torch.int32),
    i16=torch.tensor([1], dtype=torch.int16), i8=torch.tensor([1], dtype=torch.int8),
    u8=torch.tensor([1], dtype=torch.uint8), b=torch.tensor([True]),
    scalar=torch.tensor(7), empty=torch.zeros(0, 2))
torch.save(dtypes, os.path.join(pth, "dtypes.pth"))
torch.jit.script(torch.nn.Conv2d(1, 1, 1)).save(os.path.join(pth, "torchscript.pt"))


def safetensors(name, tensors, metadata=None):
    header, blobs, pos = collections.OrderedDict(), [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for k, (dt, arr) in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[k] = {"dtype": dt, "shape": list(arr.shape),
                     "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(st, name), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


safetensors("simple.safetensors", {"w": ("F32", np.arange(6, dtype=np.float32).reshape(2, 3))})
safetensors("metadata.safetensors",
            {"a": ("F16", np.ones(3, np.float16)), "b": ("BF16", np.ones(2, np.uint16))},
            {"format": "pt", "note": "seed"})
safetensors("dtypes.safetensors", {
    "f64": ("F64", np.ones(2)), "i64": ("I64", np.array([1, -1])),
    "i32": ("I32", np.array([3], np.int32)), "i16": ("I16", np.array([3], np.int16)),
    "i8": ("I8", np.array([-3], np.int8)), "u8": ("U8", np.array([3], np.uint8)),
    "b": ("BOOL", np.array([True, False])), "scalar": ("F32", np.array(2.5, np.float32)),
    "empty": ("F32", np.zeros((0, 3), np.float32))})
