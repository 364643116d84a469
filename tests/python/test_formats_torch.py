"""Weight formats against real PyTorch (1.13): files torch.save writes read
back bit-exact through libdecomp (ctypes), and the .pth and safetensors files
libdecomp writes load in torch.load(weights_only=True) — and, for
safetensors, in a small independent reader (JSON header + numpy.frombuffer)
since the safetensors package is not in Debian 12 — with the same keys,
order, dtypes, shapes, values and metadata.
"""
import collections
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
import torchvision

import decomp_ctypes as D


@pytest.fixture(scope="module")
def lib():
    return D.Lib()


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's elements as numpy (bf16 as its raw uint16 bits)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype and
            np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def assert_set_equals_state_dict(ws, sd):
    assert ws.names() == list(sd.keys())
    for i, (name, t) in enumerate(sd.items()):
        arr = ws.array(i)
        want = as_numpy(t)
        assert same_bits(arr, want), name
        assert ws.dtype(i) == DTYPE_NAME[t.dtype], name


def assert_state_dicts_equal(got, want, strides=True):
    assert isinstance(got, collections.OrderedDict)
    assert list(got.keys()) == list(want.keys())
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert same_bits(as_numpy(got[k]), as_numpy(want[k])), k
        if strides:
            assert got[k].stride() == want[k].stride(), k
            assert got[k].storage_offset() == want[k].storage_offset(), k
    assert getattr(got, "_metadata", None) == getattr(want, "_metadata", None)


DTYPE_NAME = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
NP_DTYPE = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16,
            "F64": np.float64, "I64": np.int64, "I32": np.int32,
            "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path):
    """An independent safetensors reader: header JSON + numpy.frombuffer.
    Returns (ordered list of (name, array, dtype name), metadata), checking
    the layout to the spec on the way."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0 and 8 + n <= len(data)
    header = json.loads(data[8:8 + n].decode(),
                        object_pairs_hook=collections.OrderedDict)
    meta = header.pop("__metadata__", None)
    body = data[8 + n:]
    out, pos = [], 0
    for name, e in header.items():
        begin, end = e["data_offsets"]
        assert begin == pos, name  # our writer keeps the set's order
        dt = np.dtype(NP_DTYPE[e["dtype"]])
        count = int(np.prod(e["shape"], dtype=np.int64))
        assert end - begin == count * dt.itemsize, name
        arr = np.frombuffer(body, dtype=dt, count=count, offset=begin)
        out.append((name, arr.reshape(e["shape"]), e["dtype"]))
        pos = end
    assert pos == len(body)
    return out, meta


def model_state_dict(name, half):
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)()
    if half:
        m = m.half()
    return m.state_dict()


@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16"])
@pytest.mark.parametrize("model", ["resnet18", "vgg11", "mobilenet_v2"])
def test_torchvision_state_dicts_round_trip_bit_exact(lib, tmp_path, model, half):
    sd = model_state_dict(model, half)
    src = tmp_path / f"{model}.pth"
    torch.save(sd, src)
    with lib.open(src) as ws:
        assert ws.format() == "pth"
        assert_set_equals_state_dict(ws, sd)
        assert ws.metadata() == {k: dict(v) for k, v in sd._metadata.items()}
        # Our .pth, loaded by torch with weights_only=True.
        out = tmp_path / "ours.pth"
        ws.save(out, "pth")
        with zipfile.ZipFile(out) as z:
            names = z.namelist()
            assert names[0] == "ours/data.pkl" and "ours/version" in names
            assert z.read("ours/version") == b"3\n"
            assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
            assert z.testzip() is None  # every CRC right
        got = torch.load(out, weights_only=True)
        assert_state_dicts_equal(got, sd)
        # Our safetensors, through the independent reader.
        st = tmp_path / "ours.safetensors"
        ws.save(st, "safetensors")
    tensors, meta = read_safetensors(st)
    assert [n for n, _, _ in tensors] == list(sd.keys())
    for (name, arr, dt), (k, t) in zip(tensors, sd.items()):
        assert dt == DTYPE_NAME[t.dtype], name
        assert same_bits(arr, as_numpy(t)), name
    assert meta == {k: json.dumps(dict(v), separators=(",", ":"))
                    for k, v in sd._metadata.items()}
    # And libdecomp reads its own safetensors back to the same values.
    with lib.open(st) as ws2:
        assert ws2.format() == "safetensors"
        assert_set_equals_state_dict(ws2, sd)


def views_state_dict():
    torch.manual_seed(1)
    base = torch.randn(4, 6)
    sd = collections.OrderedDict()
    sd["base"] = base
    sd["transposed"] = base.t()                 # strides (1, 6)
    sd["column"] = base[:, 2]                   # offset 2, stride 6
    sd["block"] = base[1:3, 2:5]                # offset 8, strides (6, 1)
    sd["every_other"] = base.view(-1)[1::2]     # stride 2
    sd["expanded"] = torch.randn(3, 1).expand(3, 4)  # stride 0
    sd["own"] = torch.randn(2, 2)
    sd._metadata = collections.OrderedDict(
        [("", {"version": 1}), ("block", {"version": 3})])
    return sd


def test_strided_views_and_shared_storage_round_trip(lib, tmp_path):
    sd = views_state_dict()
    src = tmp_path / "views.pth"
    torch.save(sd, src)
    with lib.open(src) as ws:
        assert_set_equals_state_dict(ws, sd)
        raw = [ws.raw(i) for i in range(len(ws))]
        # Views of one torch storage share it in libdecomp too, zero-copy.
        assert len({r.storage for r in raw[:5]}) == 1
        assert raw[2].offset == 2 and raw[3].offset == 8
        assert tuple(raw[1].stride[:2]) == (1, 6)
        assert raw[5].stride[1] == 0
        out = tmp_path / "views_out.pth"
        ws.save(out, "pth")
        st = tmp_path / "views_out.safetensors"
        ws.save(st, "safetensors")
    got = torch.load(out, weights_only=True)
    assert_state_dicts_equal(got, sd)
    # Written sharing one storage, as torch.save does.
    ptr = got["base"].storage().data_ptr()
    for k in ["transposed", "column", "block", "every_other"]:
        assert got[k].storage().data_ptr() == ptr, k
    assert got["own"].storage().data_ptr() != ptr
    got["base"][0, 2] = 42.0
    assert got["column"][0].item() == 42.0
    # safetensors has no views: each tensor written whole and contiguous.
    tensors, _ = read_safetensors(st)
    for name, arr, _ in tensors:
        assert same_bits(arr, sd[name].contiguous().numpy()), name


def test_other_dtypes_scalars_and_empty_tensors(lib, tmp_path):
    torch.manual_seed(2)
    sd = collections.OrderedDict()
    sd["bf16"] = torch.randn(3, 5).to(torch.bfloat16)
    sd["f64"] = torch.randn(4, dtype=torch.float64)
    sd["i64"] = torch.tensor([-(2 ** 62), 0, 2 ** 62 + 7])
    sd["i32"] = torch.randint(-2 ** 31, 2 ** 31 - 1, (6,), dtype=torch.int32)
    sd["i16"] = torch.randint(-2 ** 15, 2 ** 15 - 1, (2, 3), dtype=torch.int16)
    sd["i8"] = torch.randint(-128, 127, (7,), dtype=torch.int8)
    sd["u8"] = torch.randint(0, 255, (7,), dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(3, dtype=torch.int64)  # num_batches_tracked
    sd["empty"] = torch.zeros(0, 3)
    sd["f16_nan_inf"] = torch.tensor([float("nan"), float("inf"), -0.0, 65504],
                                     dtype=torch.float16)
    src = tmp_path / "dtypes.pth"
    torch.save(sd, src)
    with lib.open(src) as ws:
        assert_set_equals_state_dict(ws, sd)
        ws.save(tmp_path / "o.pth", "pth")
        ws.save(tmp_path / "o.safetensors", "safetensors")
    got = torch.load(tmp_path / "o.pth", weights_only=True)
    assert_state_dicts_equal(got, sd)
    tensors, meta = read_safetensors(tmp_path / "o.safetensors")
    assert meta is None
    for (name, arr, dt), (k, t) in zip(tensors, sd.items()):
        assert name == k and dt == DTYPE_NAME[t.dtype]
        assert same_bits(arr, as_numpy(t)), name
    with lib.open(tmp_path / "o.safetensors") as ws:
        assert_set_equals_state_dict(ws, sd)


def test_safetensors_agrees_with_torch_load_of_the_same_tensors(lib, tmp_path):
    """DESIGN: our safetensors checked against torch.load of the same
    tensors saved as .pth."""
    sd = model_state_dict("resnet18", False)
    with lib.new() as ws:
        for k, t in sd.items():
            ws.add(k, t.numpy())
        ws.set_metadata({"format": "pt", "source": "resnet18"})
        ws.save(tmp_path / "a.safetensors", "safetensors")
        ws.save(tmp_path / "a.pth", "pth")
    ref = torch.load(tmp_path / "a.pth", weights_only=True)
    tensors, meta = read_safetensors(tmp_path / "a.safetensors")
    assert meta == {"format": "pt", "source": "resnet18"}
    assert [n for n, _, _ in tensors] == list(ref.keys())
    for name, arr, _ in tensors:
        assert same_bits(arr, ref[name].numpy()), name
    assert ref._metadata == {"format": "pt", "source": "resnet18"}


def test_archive_folder_is_the_file_stem_or_anything(lib, tmp_path):
    sd = views_state_dict()
    odd = tmp_path / "my weights.v1.pth"
    torch.save(sd, odd)
    assert zipfile.ZipFile(odd).namelist()[0] == "my weights.v1/data.pkl"
    with lib.open(odd) as ws:
        assert_set_equals_state_dict(ws, sd)
    buf = io.BytesIO()
    torch.save(sd, buf)  # a stream: folder "archive"
    data = buf.getvalue()
    assert lib.detect(data) == "pth"
    with lib.open_memory(data) as ws:
        assert_set_equals_state_dict(ws, sd)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/decompd-formats-pwned",))


def test_pickle_calling_os_system_is_refused_without_running(lib, tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(
            collections.OrderedDict(w=_Evil()), protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(D.DecompError) as e:
        lib.open(path)
    assert e.value.name == "forbidden_global"
    assert "global posix system is not allowed" in e.value.message
    assert "data.pkl offset" in e.value.message
    assert not os.path.exists("/tmp/decompd-formats-pwned")
    # PyTorch's own weights-only loader agrees.
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


def test_torchscript_archive_is_told_apart(lib, tmp_path):
    m = torch.jit.script(torch.nn.Conv2d(3, 4, 3))
    path = tmp_path / "scripted.pt"
    m.save(str(path))
    assert lib.detect(path.read_bytes()) == "torchscript"
    with pytest.raises(D.DecompError) as e:
        lib.open(path)
    assert e.value.name == "torchscript_unsupported"


def test_compressed_archive_is_refused_with_a_clear_error(lib, tmp_path):
    sd = views_state_dict()
    src = tmp_path / "a.pth"
    torch.save(sd, src)
    out = tmp_path / "deflated.pth"
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(out, "w",
                                                     zipfile.ZIP_DEFLATED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, zi.read(info.filename))
    with pytest.raises(D.DecompError) as e:
        lib.open(out)
    assert e.value.name == "bad_zip" and "compressed" in e.value.message
