"""decompctl decompose on sharded safetensors checkpoints (the Hugging Face
layout: model-0000i-of-0000N.safetensors plus model.safetensors.index.json).

The checkpoints are synthesized here with a tiny safetensors writer (json +
numpy), and the outputs read back by an equally tiny reader: neither goes
through decompd's code, and no package beyond numpy and PyTorch is needed.
"""
import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

DECOMPCTL = os.environ.get("DECOMPCTL", "decompctl")
INDEX = "model.safetensors.index.json"
DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16",
          np.dtype("float64"): "F64", np.dtype("int64"): "I64"}
NP_OF = {v: k for k, v in DTYPES.items()}


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, numpy array), written in this order."""
    header, pos = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in tensors:
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, a in tensors:
            f.write(np.ascontiguousarray(a).tobytes())


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} in header order, checking the layout."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    header.pop("__metadata__", None)
    data = buf[8 + n:]
    out, pos = {}, 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        b, end = e["data_offsets"]
        assert b == pos, (name, b, pos)
        count = int(np.prod(e["shape"])) if e["shape"] else 1
        assert end - b == count * np.dtype(NP_OF[e["dtype"]]).itemsize, name
        pos = end
    assert pos == len(data), (path, pos, len(data))
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], tuple(e["shape"]), data[b:end])
    return out


def read_sharded(folder):
    """Every tensor of a sharded output, checked against its index."""
    with open(os.path.join(folder, INDEX)) as f:
        index = json.load(f)
    tensors, total = {}, 0
    for shard in sorted(set(index["weight_map"].values())):
        assert "/" not in shard
        got = read_safetensors(os.path.join(folder, shard))
        for name, t in got.items():
            assert index["weight_map"][name] == shard, name
            assert name not in tensors, name
            tensors[name] = t
            total += len(t[2])
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == total
    return tensors


def model_tensors(layers=6, d=256, vocab=512, seed=0, dtype=np.float32):
    """A few Linear layers with trained-like (low-rank plus noise) weights,
    and tensors that pass through (an embedding, norms, a step counter)."""
    rng = np.random.default_rng(seed)
    ts = [("embed.weight", rng.standard_normal((vocab, d)).astype(dtype))]
    for i in range(layers):
        w = (rng.standard_normal((d, 24)) @ rng.standard_normal((24, d)) / 24
             + 0.01 * rng.standard_normal((d, d)))
        ts.append((f"layers.{i}.proj.weight", w.astype(dtype)))
        ts.append((f"layers.{i}.proj.bias", rng.standard_normal(d).astype(dtype)))
        ts.append((f"layers.{i}.norm.weight", np.ones(d, dtype)))
    ts.append(("steps", np.array([7], np.int64)))
    return ts


def spec_for(layers, d):
    return {"layers": [{"name": f"layers.{i}.proj", "type": "Linear",
                        "in_features": d, "out_features": d, "bias": True}
                       for i in range(layers)]}


POLICY = json.dumps({"name": "fixed", "rank": 16, "types": ["Linear"]})


def write_sharded(folder, tensors, nshards, metadata=None):
    """Split `tensors` in order into `nshards` files, as the Hub names them."""
    os.makedirs(folder, exist_ok=True)
    per = -(-len(tensors) // nshards)
    wmap, total = {}, 0
    for s in range(nshards):
        name = f"model-{s + 1:05d}-of-{nshards:05d}.safetensors"
        part = tensors[s * per:(s + 1) * per]
        write_safetensors(os.path.join(folder, name), part,
                          metadata if metadata is not None else {"format": "pt"})
        for n, a in part:
            wmap[n] = name
            total += a.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": wmap}
    with open(os.path.join(folder, INDEX), "w") as f:
        json.dump(index, f)
    return index


# OpenBLAS's threads spin while they wait; on a shared machine with more
# runnable threads than cores that makes a run many times slower, so the
# engine runs single-threaded here (the bytes do not depend on it).
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")


def run(*args):
    p = subprocess.run([DECOMPCTL, *map(str, args)], capture_output=True,
                       text=True, timeout=900, env=ENV)
    return p.returncode, p.stdout, p.stderr


# A small launcher: the peak RSS a process reports (ru_maxrss) keeps, across
# exec, whatever the forking process had resident, and pytest with numpy and
# torch loaded is far above the bound. Forked from this small interpreter
# the count starts near its ~10 MB (an over-estimate on the safe side).
LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
sys.stderr.write("\\nmaxrss_kb=%d\\n" % ru.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured_run(*args):
    """Run decompctl; (returncode, stdout, stderr, the child's peak RSS in
    bytes as wait4 reports it)."""
    p = subprocess.run(["/usr/bin/python3", "-c", LAUNCH, DECOMPCTL,
                        *map(str, args)], capture_output=True, text=True,
                       timeout=900, env=ENV)
    err, _, tail = p.stderr.rpartition("\nmaxrss_kb=")
    return p.returncode, p.stdout, err, int(tail) * 1024


def sanitized():
    """Whether decompctl is an ASan build: its allocator, shadow memory and
    interceptors keep far more resident than the program does (the 210 MB
    checkpoint below peaks near its own size there), so the memory bound is
    a property of the plain build only; the results are still checked."""
    p = subprocess.run(["ldd", DECOMPCTL], capture_output=True, text=True)
    return "libasan" in p.stdout


@pytest.fixture
def sharded(tmp_path):
    ts = model_tensors()
    write_sharded(tmp_path / "ckpt", ts, 3)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_for(6, 256)))
    return tmp_path / "ckpt", spec, ts


def test_sharded_input_gives_sharded_output_equal_to_a_one_file_run(sharded, tmp_path):
    """Folder in, sharded out; the same tensors in one file, decomposed to one
    file (streamed) and to .pth (in memory), give the same bytes."""
    ckpt, spec, ts = sharded
    rc, out, err = run("decompose", "--weights", ckpt, "--spec", spec,
                       "--out", tmp_path / "out", "--policy", POLICY, "--quiet")
    assert rc == 0, err
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == sorted(["decompose_info.json", INDEX,
                            "model-00001-of-00001.safetensors"]), names
    got = read_sharded(tmp_path / "out")

    one = tmp_path / "one.safetensors"
    write_safetensors(one, ts, {"format": "pt"})
    rc, _, err = run("decompose", "--weights", one, "--spec", spec, "--out",
                     tmp_path / "one", "--policy", POLICY, "--format",
                     "safetensors", "--quiet")
    assert rc == 0, err
    want = read_safetensors(tmp_path / "one" / "decomposed_weights.safetensors")
    assert list(got) == list(want)
    for name in want:
        assert got[name] == want[name], name
    assert "layers.0.proj.0.weight" in got and "layers.0.proj.weight" not in got
    assert got["layers.0.proj.0.weight"][1] == (16, 256)
    assert got["layers.0.proj.1.bias"][2] == ts[2][1].tobytes()

    rc, _, err = run("decompose", "--weights", one, "--spec", spec, "--out",
                     tmp_path / "pth", "--policy", POLICY, "--quiet")
    assert rc == 0, err
    sd = torch.load(tmp_path / "pth" / "decomposed_weights.pth", weights_only=True)
    assert list(sd) == list(want)
    for name, t in sd.items():
        assert t.contiguous().numpy().tobytes() == want[name][2], name

    info = json.loads((tmp_path / "out" / "decompose_info.json").read_text())
    assert info["summary"]["layers_decomposed"] == 6
    assert info["summary"]["peak_rss_bytes"] > 0
    assert info["source"]["format"] == "safetensors"


def test_index_file_path_and_shard_bytes_split_the_output(sharded, tmp_path):
    """--weights INDEX works like the folder; --shard-bytes packs the output
    in order into shards under the limit (a tensor over it alone)."""
    ckpt, spec, _ = sharded
    rc, out, err = run("decompose", "--weights", ckpt / INDEX, "--spec", spec,
                       "--out", tmp_path / "out", "--policy", POLICY,
                       "--shard-bytes", "100K", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["weights"].endswith(INDEX)
    files = [f for f in os.listdir(tmp_path / "out") if f.endswith(".safetensors")]
    assert len(files) >= 3, files
    for f in files:
        size = os.path.getsize(tmp_path / "out" / f)
        data = read_safetensors(tmp_path / "out" / f)
        assert size < 100_000 + 4096 or len(data) == 1, (f, size)
    assert len(read_sharded(tmp_path / "out")) == 6 * 4 + 2


def test_single_file_over_shard_bytes_is_written_sharded(tmp_path):
    ts = model_tensors(layers=2, d=128, vocab=64)
    one = tmp_path / "one.safetensors"
    write_safetensors(one, ts)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_for(2, 128)))
    rc, _, err = run("decompose", "--weights", one, "--spec", spec, "--out",
                     tmp_path / "out", "--policy", POLICY, "--format",
                     "safetensors", "--shard-bytes", "40KB", "--quiet")
    assert rc == 0, err
    assert (tmp_path / "out" / INDEX).exists()
    assert not (tmp_path / "out" / "decomposed_weights.safetensors").exists()
    got = read_sharded(tmp_path / "out")
    assert got["embed.weight"][2] == ts[0][1].tobytes()


def test_pth_output_of_a_sharded_input_is_a_usage_error(sharded, tmp_path):
    ckpt, spec, _ = sharded
    rc, _, err = run("decompose", "--weights", ckpt, "--spec", spec, "--out",
                     tmp_path / "out", "--format", "pth")
    assert rc == 2 and "single-file" in err, err
    assert not (tmp_path / "out").exists()


def corrupt(ckpt, case):
    """Damage the checkpoint at `ckpt` as `case` says; what the error must
    name."""
    index = json.loads((ckpt / INDEX).read_text())
    wmap = index["weight_map"]
    shards = sorted(set(wmap.values()))
    if case == "missing_shard":
        os.remove(ckpt / shards[1])
        return [shards[1], "missing"]
    if case == "tensor_in_two_shards":
        # layers.0.proj.weight (shard 1) written into shard 2 as well
        extra = read_safetensors(ckpt / shards[1])
        ts = [(n, np.frombuffer(b, NP_OF[dt]).reshape(shape))
              for n, (dt, shape, b) in extra.items()]
        ts.append(("layers.0.proj.weight", np.zeros((256, 256), np.float32)))
        write_safetensors(ckpt / shards[1], ts)
        return ["layers.0.proj.weight", "two shards", shards[0], shards[1]]
    if case == "truncated_shard":
        size = os.path.getsize(ckpt / shards[2])
        with open(ckpt / shards[2], "r+b") as f:
            f.truncate(size - 1000)
        return [shards[2], "past the data section"]
    if case == "unreferenced_shard":
        shutil.copy(ckpt / shards[0], ckpt / "model-00004-of-00004.safetensors")
        return ["model-00004-of-00004.safetensors", "not referenced"]
    if case in ("slash_in_name", "dotdot_in_name"):
        bad = "sub/x.safetensors" if case == "slash_in_name" else "..x.safetensors"
        wmap["steps"] = bad
        (ckpt / INDEX).write_text(json.dumps(index))
        return ["steps", bad]
    if case == "tensor_not_in_its_shard":
        wmap["ghost.weight"] = shards[0]
        (ckpt / INDEX).write_text(json.dumps(index))
        return ["ghost.weight", shards[0], "does not hold it"]
    if case == "tensor_missing_from_map":
        del wmap["steps"]
        (ckpt / INDEX).write_text(json.dumps(index))
        return ["steps", shards[2], "not in the index"]
    if case == "wrong_total_size":
        index["metadata"]["total_size"] += 4
        (ckpt / INDEX).write_text(json.dumps(index))
        return ["total_size"]
    if case == "not_json":
        (ckpt / INDEX).write_text("{\"weight_map\": ")
        return ["not JSON"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "missing_shard", "tensor_in_two_shards", "truncated_shard",
    "unreferenced_shard", "slash_in_name", "dotdot_in_name",
    "tensor_not_in_its_shard", "tensor_missing_from_map", "wrong_total_size",
    "not_json"])
def test_a_bad_sharded_checkpoint_exits_3_naming_tensor_and_shard(case, sharded, tmp_path):
    ckpt, spec, _ = sharded
    words = corrupt(ckpt, case)
    out = tmp_path / "out"
    rc, _, err = run("decompose", "--weights", ckpt, "--spec", spec, "--out",
                     out, "--policy", POLICY)
    assert rc == 3, (rc, err)
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_a_sharded_checkpoint_larger_than_the_memory_bound_decomposes_within_it(tmp_path):
    """The checkpoint (~210 MB over 4 shards: 128 MB of Linear layers, and an
    embedding that passes through) is twice the bound the run must stay
    under, measured as the child's own peak RSS (wait4's ru_maxrss).
    RSS is what proves the point: the shards are mapped, and the mapped file
    pages a process touches count in its RSS just as its heap does, so a run
    that read the model whole, or held its output until the end, goes over
    (as the .pth path, which builds the result in memory, does).
    No rlimit is set: RLIMIT_AS counts the mappings themselves, the whole
    model by design, and RLIMIT_DATA counts OpenBLAS's 128 MiB per thread of
    reserved (mostly untouched) buffers, on which OpenBLAS spins rather than
    failing. The result must equal a run with the engine's default output
    sharding, bit for bit."""
    layers, d = 32, 1024
    ts = model_tensors(layers=layers, d=d, vocab=20000, seed=1)
    ckpt = tmp_path / "big"
    write_sharded(ckpt, ts, 4)
    size = sum(a.nbytes for _, a in ts)
    assert size > 190e6
    del ts
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_for(layers, d)))
    bound = 100 * 2**20
    rc, _, err, peak = measured_run(
        "decompose", "--weights", ckpt, "--spec", spec, "--out",
        tmp_path / "out", "--policy", POLICY, "--shard-bytes", "64MB",
        "--quiet")
    assert rc == 0, err
    info = json.loads((tmp_path / "out" / "decompose_info.json").read_text())
    assert info["summary"]["layers_decomposed"] == layers
    if not sanitized():
        assert peak < bound, (peak, size)
        assert 0 < info["summary"]["peak_rss_bytes"] <= peak + 2**20
    got = read_sharded(tmp_path / "out")
    assert len([f for f in os.listdir(tmp_path / "out") if f.startswith("model-")]) == 2

    rc, _, err = run("decompose", "--weights", ckpt, "--spec", spec, "--out",
                     tmp_path / "free", "--policy", POLICY, "--quiet")
    assert rc == 0, err
    want = read_sharded(tmp_path / "free")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name


def test_a_checkpoint_bigger_than_the_data_rlimit_decomposes_under_it(tmp_path):
    """`prlimit --data` (RLIMIT_DATA: the heap and every private writable
    mapping, where a model read whole, a converted copy of it, or an output
    held until the end would have to live) set to 300 MiB, under a 460 MB
    checkpoint (an embedding that passes through, and 32 Linear layers):
    the run succeeds, and gives the unlimited run's tensors bit for bit.
    The shards themselves are read-only file mappings, outside that limit
    by design (RLIMIT_AS would count them). OpenBLAS runs single-threaded:
    its reserved buffers (128 MiB a thread) count too."""
    if sanitized():
        pytest.skip("ASan reserves its shadow memory against RLIMIT_DATA")
    layers, d = 32, 1024
    ts = model_tensors(layers=layers, d=d, vocab=80000, seed=2)
    ckpt = tmp_path / "big"
    write_sharded(ckpt, ts, 3)
    size = sum(a.nbytes for _, a in ts)
    del ts
    limit = 300 * 2**20
    assert size > 1.4 * limit
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_for(layers, d)))
    args = ["decompose", "--weights", ckpt, "--spec", spec, "--policy", POLICY,
            "--shard-bytes", "100MB", "--quiet"]
    p = subprocess.run(["prlimit", f"--data={limit}", DECOMPCTL,
                        *map(str, args), "--out", tmp_path / "limited"],
                       capture_output=True, text=True, timeout=900, env=ENV)
    assert p.returncode == 0, p.stderr
    rc, _, err = run(*args, "--out", tmp_path / "free")
    assert rc == 0, err
    got, want = read_sharded(tmp_path / "limited"), read_sharded(tmp_path / "free")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name


def test_a_rerun_into_the_same_folder_leaves_one_checkpoint(sharded, tmp_path):
    """Shards an earlier run left in --out that this run does not write
    (more shards before; sharded before and one file now) are removed, so
    the folder reads back as the new checkpoint."""
    ckpt, spec, _ = sharded
    out = tmp_path / "out"
    keep = tmp_path / "out" / "notes.txt"

    def decompose(*extra):
        rc, _, err = run("decompose", "--weights", ckpt, "--spec", spec,
                         "--out", out, "--policy", POLICY, "--quiet", *extra)
        assert rc == 0, err

    def shards():
        return sorted(f for f in os.listdir(out) if f.startswith("model-"))

    decompose("--shard-bytes", "100K")
    many = shards()
    assert len(many) >= 3, many
    keep.write_text("mine")
    decompose("--shard-bytes", "1G")
    assert shards() == ["model-00001-of-00001.safetensors"]
    assert len(read_sharded(out)) == 6 * 4 + 2
    # the folder is a valid input again (a stale shard beside the index
    # would be refused as unreferenced)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"layers": []}))
    rc, _, err = run("decompose", "--weights", out, "--spec", empty, "--out",
                     tmp_path / "again", "--quiet")
    assert rc == 0, err
    assert keep.read_text() == "mine"
