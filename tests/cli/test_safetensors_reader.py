"""decompd.load_safetensors (python/decompd/safetensors_io.py) on what the
engine writes: decompctl decompose's safetensors output, one file or
sharded (--shard-bytes small to force several shards), read back tensor
for tensor and compared bit for bit with torch.load of the same run's .pth
output; and the strict checks: malformed headers, offsets past the end or
overlapping, a tensor in two shards, an unreferenced or missing shard,
shard names that are paths, a wrong total_size."""
import json
import os
import shutil
import struct
import subprocess

import pytest
import torch

import decompd
from decompd import SafetensorsError, load_safetensors

DECOMPCTL = os.environ.get("DECOMPCTL", "decompctl")
INDEX = "model.safetensors.index.json"
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")
ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
      torch.float64: "F64", torch.int64: "I64"}


def write_st(path, tensors):
    """tensors: list of (name, torch tensor); a safetensors file written
    here, independently of decompd."""
    header, pos, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t in tensors:
        b = t.contiguous().view(torch.uint8).numpy().tobytes() \
            if t.numel() else b""
        header[name] = {"dtype": ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def model(dtype, layers=4, d=96):
    g = torch.Generator().manual_seed(1)
    ts = [("embed.weight", torch.randn(200, d, generator=g).to(dtype))]
    for i in range(layers):
        w = torch.randn(d, 12, generator=g) @ torch.randn(12, d, generator=g)
        ts.append((f"layers.{i}.proj.weight", (w / 12).to(dtype)))
        ts.append((f"layers.{i}.proj.bias", torch.randn(d, generator=g)
                   .to(dtype)))
        ts.append((f"layers.{i}.norm.weight", torch.ones(d, dtype=dtype)))
    ts.append(("steps", torch.tensor([7], dtype=torch.int64)))
    spec = {"layers": [{"name": f"layers.{i}.proj", "type": "Linear",
                        "in_features": d, "out_features": d, "bias": True}
                       for i in range(layers)]}
    return ts, spec


def decompose(tmp_path, dtype, *extra):
    """(out folder of a safetensors run with `extra`, the .pth run's state
    dict) for the same input."""
    ts, spec = model(dtype)
    w = tmp_path / "w.safetensors"
    write_st(w, ts)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    policy = json.dumps({"name": "fixed", "rank": 8, "types": ["Linear"]})
    outs = {}
    for fmt, args in (("safetensors", extra), ("pth", ())):
        out = tmp_path / fmt
        p = subprocess.run([DECOMPCTL, "decompose", "--weights", str(w),
                            "--spec", str(tmp_path / "spec.json"), "--out",
                            str(out), "--policy", policy, "--format", fmt,
                            "--quiet", *args], capture_output=True, text=True,
                           timeout=600, env=ENV)
        assert p.returncode == 0, p.stderr
        outs[fmt] = out
    ref = torch.load(outs["pth"] / "decomposed_weights.pth",
                     weights_only=True)
    return outs["safetensors"], ref


def same_bits(got, ref):
    assert list(got) == list(ref)
    for k, t in ref.items():
        g = got[k]
        assert g.dtype == t.dtype and g.shape == t.shape, k
        assert torch.equal(g.contiguous().view(torch.uint8),
                           t.contiguous().view(torch.uint8)), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16,
                                   torch.bfloat16, torch.float64],
                         ids=["F32", "F16", "BF16", "F64"])
def test_engine_shards_read_back_equal_to_torch_load_of_the_pth_output(
        tmp_path, dtype):
    out, ref = decompose(tmp_path, dtype, "--shard-bytes", "10K")
    shards = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    assert len(shards) >= 3 and (out / INDEX).exists(), shards
    # The index, the folder and decompd.load_safetensors all agree.
    same_bits(load_safetensors(out / INDEX), ref)
    same_bits(decompd.load_safetensors(str(out)), ref)
    # Tensors are writable and writing them leaves the file alone.
    before = (out / shards[0]).read_bytes()
    for t in load_safetensors(out / INDEX).values():
        t.zero_()
    assert (out / shards[0]).read_bytes() == before


def test_engine_single_file_output_reads_back_equal_to_the_pth(tmp_path):
    out, ref = decompose(tmp_path, torch.float32)
    same_bits(load_safetensors(out / "decomposed_weights.safetensors"), ref)


def test_shards_given_by_name_from_elsewhere_load_the_same(tmp_path):
    """As a cache holds them: each shard under another path."""
    out, ref = decompose(tmp_path, torch.float32, "--shard-bytes", "20K")
    elsewhere = tmp_path / "blobs"
    elsewhere.mkdir()
    shards = {}
    for i, n in enumerate(sorted(os.listdir(out))):
        if n.endswith(".safetensors"):
            shards[n] = elsewhere / ("blob%d" % i)
            shutil.copy(out / n, shards[n])
    index = tmp_path / "idx.json"
    shutil.copy(out / INDEX, index)
    same_bits(load_safetensors(index, shards=shards), ref)
    # A shard given that the index does not name is refused.
    extra = dict(shards, **{"model-00099-of-00099.safetensors":
                            shards[sorted(shards)[0]]})
    with pytest.raises(SafetensorsError, match="not referenced"):
        load_safetensors(index, shards=extra)
    # One left out is missing.
    fewer = dict(list(shards.items())[1:])
    with pytest.raises(SafetensorsError, match="is missing"):
        load_safetensors(index, shards=fewer)


@pytest.fixture
def sharded(tmp_path):
    out, _ = decompose(tmp_path, torch.float32, "--shard-bytes", "20K")
    return out


def header_of(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def rewrite(path, header, data):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def first_shard(folder):
    return folder / sorted(n for n in os.listdir(folder)
                           if n.endswith(".safetensors"))[0]


def refused(path, what):
    with pytest.raises(SafetensorsError, match=what) as e:
        load_safetensors(path)
    print(e.value)
    assert isinstance(e.value, ValueError)
    return str(e.value)


def test_malformed_headers_are_refused_naming_the_file(tmp_path):
    f = tmp_path / "one.safetensors"
    write_st(f, [("a", torch.arange(6, dtype=torch.float32)),
                 ("b", torch.ones(2, 2, dtype=torch.float16))])
    good = f.read_bytes()
    header, data = header_of(f)
    (n,) = struct.unpack("<Q", good[:8])

    def bad(raw, what):
        p = tmp_path / "bad.safetensors"
        p.write_bytes(raw)
        assert str(p) in refused(p, what)

    bad(good[:5], "too short")
    bad(good[:8 + n - 3], "runs past the end")
    bad(struct.pack("<Q", 200 * 10 ** 6) + good[8:], "100 MB")
    bad(struct.pack("<Q", 4) + b"{1: " + data, "not JSON")
    bad(struct.pack("<Q", 4) + b"[1] " + data, "not a JSON object")
    bad(good[:8] + good[8:8 + n].replace(b'"b"', b'"a"', 1) + data, "twice")
    for edit, what in [
            (lambda h: h["a"].update(dtype="F8_E4M3"), "unknown dtype"),
            (lambda h: h["a"].update(shape=[2, -3]), "shape"),
            (lambda h: h["a"].update(data_offsets=[0]), "data_offsets"),
            (lambda h: h["b"].update(data_offsets=[24, 10 ** 6]),
             "past the data section"),
            (lambda h: h["a"].update(shape=[7]), "span"),
            (lambda h: h["b"].update(data_offsets=[16, 24]), "overlap"),
            (lambda h: h["a"].update(crc=1), "exactly dtype"),
            (lambda h: h["__metadata__"].update(x=1), "not a string")]:
        h = json.loads(json.dumps(header))
        edit(h)
        p = tmp_path / "bad.safetensors"
        rewrite(p, h, data)
        refused(p, what)
    # Data left over after the last tensor, or missing.
    p = tmp_path / "bad.safetensors"
    p.write_bytes(good + b"\0" * 4)
    refused(p, "tensors cover")
    # A BOOL byte that is neither 0 nor 1.
    rewrite(p, {"m": {"dtype": "BOOL", "shape": [2],
                      "data_offsets": [0, 2]}}, b"\x01\x02")
    refused(p, "BOOL")


def test_offsets_past_the_end_of_a_shard_are_refused(sharded):
    s = first_shard(sharded)
    header, data = header_of(s)
    name = [k for k in header if k != "__metadata__"][-1]
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b, e + 4]
    rewrite(s, header, data)
    msg = refused(sharded / INDEX, "past the data section")
    assert s.name in msg and name in msg


def test_a_tensor_in_two_shards_is_refused(sharded):
    shards = sorted(n for n in os.listdir(sharded)
                    if n.endswith(".safetensors"))
    a = load_safetensors(sharded / shards[0])
    b = load_safetensors(sharded / shards[1])
    moved = next(iter(a))
    write_st(sharded / shards[1], list(b.items()) + [(moved, a[moved])])
    msg = refused(sharded / INDEX, "in two shards")
    assert moved in msg and shards[0] in msg and shards[1] in msg


def test_a_tensor_the_index_puts_elsewhere_or_nowhere_is_refused(sharded):
    idx = json.loads((sharded / INDEX).read_text())
    wmap = idx["weight_map"]
    shards = sorted(set(wmap.values()))
    # A tensor of a shard that holds others (so the shard stays named).
    names = [k for k in wmap
             if list(wmap.values()).count(wmap[k]) > 1]
    other = [s for s in shards if s != wmap[names[0]]][0]
    moved = dict(idx, weight_map=dict(wmap, **{names[0]: other}))
    (sharded / INDEX).write_text(json.dumps(moved))
    refused(sharded / INDEX, "but the index puts it in")
    dropped = dict(idx, weight_map={k: v for k, v in
                                    idx["weight_map"].items()
                                    if k != names[0]})
    (sharded / INDEX).write_text(json.dumps(dropped))
    refused(sharded / INDEX, "not in the index's weight_map")
    ghost = dict(idx, weight_map=dict(idx["weight_map"],
                                      **{"ghost.weight": shards[0]}))
    (sharded / INDEX).write_text(json.dumps(ghost))
    refused(sharded / INDEX, "ghost.weight.*does not hold it")
    wrong = dict(idx, metadata={"total_size": 12})
    (sharded / INDEX).write_text(json.dumps(wrong))
    refused(sharded / INDEX, "total_size")


def test_an_unreferenced_or_missing_shard_is_refused(sharded):
    shutil.copy(first_shard(sharded),
                sharded / "model-00042-of-00042.safetensors")
    refused(sharded / INDEX, "model-00042-of-00042.safetensors.*not "
                             "referenced")
    refused(sharded, "not referenced")
    os.unlink(sharded / "model-00042-of-00042.safetensors")
    load_safetensors(sharded / INDEX)  # a consolidated copy is not a shard
    one = first_shard(sharded)
    shutil.copy(one, sharded / "consolidated.safetensors")
    load_safetensors(sharded / INDEX)
    os.unlink(one)
    assert one.name in refused(sharded / INDEX, "is missing")


@pytest.mark.parametrize("shard", [
    "../model-00001-of-00003.safetensors", "sub/model.safetensors",
    "/etc/passwd.safetensors", "..safetensors", "model.bin", "",
    "a\nb.safetensors"])
def test_shard_names_that_are_not_plain_file_names_are_refused(sharded, shard):
    idx = json.loads((sharded / INDEX).read_text())
    k = next(iter(idx["weight_map"]))
    idx["weight_map"][k] = shard
    (sharded / INDEX).write_text(json.dumps(idx))
    # Outside the folder, a file the name would reach if it were followed.
    shutil.copy(first_shard(sharded),
                sharded.parent / "model-00001-of-00003.safetensors")
    refused(sharded / INDEX, "shard name")


def test_index_documents_that_are_not_indexes_are_refused(sharded):
    for text, what in [("{", "not JSON"), ("[]", "weight_map"),
                       ('{"weight_map": {}}', "empty"),
                       ('{"weight_map": {"a": 3}}', "not a string"),
                       ('{"weight_map": {"a": "x.safetensors", '
                        '"a": "y.safetensors"}}', "twice"),
                       ('{"metadata": {"total_size": -1}, "weight_map": '
                        '{"a": "x.safetensors"}}', "total_size")]:
        (sharded / INDEX).write_text(text)
        refused(sharded / INDEX, what)
