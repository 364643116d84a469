"""decompctl decompose: the local engine verb, end to end with real PyTorch.

Each test runs the built decompctl (DECOMPCTL) on files PyTorch wrote and
checks what PyTorch reads back, the exit codes and that a failure leaves
nothing behind. The spec is written here by hand from the live modules, so
these tests do not depend on the Python package."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest
import torch
import torch.nn as nn

DECOMPCTL = os.environ.get("DECOMPCTL", "decompctl")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.b = nn.Conv2d(32, 32, (3, 5), stride=(2, 1), padding=(1, 2), bias=False)
        self.c = nn.Conv2d(32, 64, 3, padding=2, dilation=2, groups=2)
        self.d = nn.Conv2d(64, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.c(self.b(self.bn(self.a(x))))
        return self.fc(self.d(x).mean((2, 3)))


def conv_spec(name, m):
    pad = m.padding if isinstance(m.padding, str) else list(m.padding)
    return {"name": name, "type": "Conv2d", "in_channels": m.in_channels,
            "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": pad, "dilation": list(m.dilation),
            "groups": m.groups, "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


def spec_of(model):
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            layers.append(conv_spec(name, m))
        elif name and isinstance(m, (nn.Linear, nn.BatchNorm2d)):
            layers.append({"name": name, "type": type(m).__name__})
    return {"layers": layers}


@pytest.fixture
def model_files(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    wpath = tmp_path / "net.pth"
    torch.save(net.state_dict(), wpath)
    spath = tmp_path / "spec.json"
    spath.write_text(json.dumps(spec_of(net)))
    return net, wpath, spath


def run(*args, check=None):
    p = subprocess.run([DECOMPCTL, *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def rebuild(net, info, sd):
    """Replace each decomposed conv of `net` by the pair the info file names."""
    for layer in info["layers"]:
        mods = []
        for m in layer["modules"]:
            pad = m["padding"] if isinstance(m["padding"], str) else tuple(m["padding"])
            mods.append(nn.Conv2d(m["in_channels"], m["out_channels"],
                                  tuple(m["kernel_size"]), tuple(m["stride"]), pad,
                                  tuple(m["dilation"]), m["groups"], m["bias"],
                                  m["padding_mode"]))
        parent = net
        *path, last = layer["name"].split(".")
        for p in path:
            parent = getattr(parent, p)
        setattr(parent, last, nn.Sequential(*mods))
    net.load_state_dict(sd, strict=True)
    return net


def test_default_policy_writes_weights_torch_loads_and_info_matching_them(model_files, tmp_path):
    net, wpath, spath = model_files
    out = tmp_path / "out"
    p = run("decompose", "--weights", wpath, "--spec", spath, "--out", out, check=0)
    assert "decomposed" in p.stdout and "MACs" in p.stdout
    info = json.loads((out / "decompose_info.json").read_text())
    sd = torch.load(out / "decomposed_weights.pth", weights_only=True)
    assert info["format"] == "decompd.decompose_info" and info["version"] == 1
    assert info["source"]["digest"].startswith("sha256:")
    for name, new in info["changes"].items():
        assert new == [name + ".0", name + ".1"]
        assert name + ".weight" not in sd
        assert name + ".0.weight" in sd and name + ".1.weight" in sd
    skipped = {s["name"] for s in info["skipped"]}
    assert {"fc", "bn"} <= skipped  # fc: a Linear the spec gives by name only
    for layer in info["layers"]:  # the 1x1 "d" has the channel method only
        assert layer["method"] == ("channel_svd" if layer["name"] == "d"
                                   else layer["method"])
    # The decomposed model runs and stays close to the original.
    x = torch.randn(2, 16, 12, 12)
    ref = net(x)
    got = rebuild(Net().eval(), info, sd)(x)
    assert got.shape == ref.shape


def test_full_rank_reproduces_the_model_output(model_files, tmp_path):
    net, wpath, spath = model_files
    out = tmp_path / "out"
    run("decompose", "--weights", wpath, "--spec", spath, "--out", out,
        "--policy", '{"name": "ratio", "ratio": 1.0, "require_cheaper": false}', check=0)
    info = json.loads((out / "decompose_info.json").read_text())
    # Every conv at full rank, the 1x1 "d" through channel_svd.
    assert set(info["changes"]) == {"a", "b", "c", "d"}
    assert next(l for l in info["layers"] if l["name"] == "d")["method"] == \
        "channel_svd"
    sd = torch.load(out / "decomposed_weights.pth", weights_only=True)
    x = torch.randn(2, 16, 12, 12)
    ref = net(x)
    got = rebuild(Net().eval(), info, sd)(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-4


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    dt = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "F64": np.float64}
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dt[v["dtype"]]).reshape(v["shape"])
    return list(header), out


def test_safetensors_output_matches_the_pth_output(model_files, tmp_path):
    _, wpath, spath = model_files
    run("decompose", "--weights", wpath, "--spec", spath, "--out", tmp_path / "p", check=0)
    run("decompose", "--weights", wpath, "--spec", spath, "--out", tmp_path / "s",
        "--format", "safetensors", check=0)
    sd = torch.load(tmp_path / "p" / "decomposed_weights.pth", weights_only=True)
    keys, st = read_safetensors(tmp_path / "s" / "decomposed_weights.safetensors")
    assert keys == list(sd)
    for k, v in sd.items():
        assert np.array_equal(st[k], v.numpy()), k


def test_threads_gives_the_same_bytes_and_a_bad_count_exits_2(model_files, tmp_path):
    _, wpath, spath = model_files
    outs = []
    for n in ("1", "2"):
        out = tmp_path / f"t{n}"
        run("decompose", "--weights", wpath, "--spec", spath, "--out", out,
            "--threads", n, check=0)
        outs.append((out / "decomposed_weights.pth").read_bytes())
    # The small model's layers are all light: one BLAS thread each either way.
    assert outs[0] == outs[1]
    for bad in ("-1", "two", "2x", ""):
        p = run("decompose", "--weights", wpath, "--spec", spath, "--out",
                tmp_path / "bad", "--threads", bad)
        assert p.returncode == 2 and "--threads" in p.stderr, (bad, p.stderr)
        assert not (tmp_path / "bad").exists()


def test_json_summary_is_one_object_with_the_totals(model_files, tmp_path):
    _, wpath, spath = model_files
    p = run("decompose", "--weights", wpath, "--spec", spath, "--out", tmp_path / "o",
            "--json", check=0)
    s = json.loads(p.stdout)
    assert s["layers_decomposed"] >= 1
    assert s["macs_after"] < s["macs_before"]


def assert_nothing_left(out):
    assert not out.exists(), list(out.iterdir())


@pytest.mark.parametrize("case", [
    "missing_weights", "not_a_weight_file", "spec_names_missing_layer",
    "spec_wrong_shape", "unknown_policy", "nan_weights", "pickle_calls_os_system",
])
def test_bad_input_exits_3_with_a_message_and_leaves_nothing(case, model_files, tmp_path):
    net, wpath, spath = model_files
    out = tmp_path / "out"
    policy = "budget"
    marker = tmp_path / "pwned"
    if case == "missing_weights":
        wpath = tmp_path / "nope.pth"
    elif case == "not_a_weight_file":
        wpath = tmp_path / "junk.pth"
        wpath.write_bytes(b"this is not a model" * 100)
    elif case == "spec_names_missing_layer":
        spec = spec_of(net)
        spec["layers"][0]["name"] = "ghost"
        spath.write_text(json.dumps(spec))
    elif case == "spec_wrong_shape":
        spec = spec_of(net)
        spec["layers"][0]["out_channels"] = 48
        spath.write_text(json.dumps(spec))
    elif case == "unknown_policy":
        policy = "magic"
    elif case == "nan_weights":
        sd = net.state_dict()
        sd["a.weight"][0, 0, 0, 0] = float("nan")
        torch.save(sd, wpath)
    elif case == "pickle_calls_os_system":
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        torch.save({"a.weight": Evil()}, wpath)
    p = run("decompose", "--weights", wpath, "--spec", spath, "--out", out,
            "--policy", policy)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert p.stderr.startswith("decompctl: ") and len(p.stderr) > 20
    expect = {"spec_names_missing_layer": "ghost", "spec_wrong_shape": "a",
              "nan_weights": "a", "unknown_policy": "magic",
              "pickle_calls_os_system": "system"}.get(case)
    if expect:
        assert expect in p.stderr, p.stderr
    assert not marker.exists()
    assert_nothing_left(out)


def test_usage_errors_exit_2_and_help_documents_exit_codes(tmp_path):
    assert run("decompose", "--weights", "x").returncode == 2
    assert run("frobnicate").returncode == 2
    assert run("decompose", "--weights", "a", "--spec", "b", "--out", tmp_path / "o",
               "--format", "onnx").returncode == 2
    h = run("--help", check=0).stdout
    for code in ("0 ", "2 ", "3 ", "4 ", "5 ", "130"):
        assert code in h


def test_output_that_cannot_be_written_exits_4(model_files, tmp_path):
    _, wpath, spath = model_files
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = run("decompose", "--weights", wpath, "--spec", spath, "--out", blocker)
    assert p.returncode == 4, p.stderr


@pytest.mark.skipif(not os.environ.get("DECOMPD_TS_READER"),
                    reason="built without the torchscript feature")
@pytest.mark.parametrize("how", ["script", "trace"])
def test_model_flag_reads_torchscript_and_matches_the_state_dict_path(how, model_files, tmp_path):
    net, wpath, spath = model_files
    x = torch.randn(1, 16, 12, 12)
    scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, x)
    ts = tmp_path / "net.pt"
    torch.jit.save(scripted, ts)
    run("decompose", "--model", ts, "--out", tmp_path / "ts", check=0)
    run("decompose", "--weights", wpath, "--spec", spath, "--out", tmp_path / "sd", check=0)
    a = torch.load(tmp_path / "ts" / "decomposed_weights.pth", weights_only=True)
    b = torch.load(tmp_path / "sd" / "decomposed_weights.pth", weights_only=True)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ia = json.loads((tmp_path / "ts" / "decompose_info.json").read_text())
    ib = json.loads((tmp_path / "sd" / "decompose_info.json").read_text())
    assert ia["source"]["format"] == "torchscript"
    assert ia["layers"] == ib["layers"] and ia["changes"] == ib["changes"]


def test_model_flag_with_a_file_that_is_not_torchscript_exits_3(model_files, tmp_path):
    _, wpath, _ = model_files
    p = run("decompose", "--model", wpath, "--out", tmp_path / "o")
    assert p.returncode == 3, p.stderr
    assert_nothing_left(tmp_path / "o")


# --- calibration (whitened decomposition) -----------------------------------

def write_calibration(path, grams, layers=None, meta=None, dtype="<f8"):
    """A decompd.calibration safetensors file, written here: {key: gram}
    (float64 Grams, or float32 with dtype "<f4")."""
    layers = layers or {k: {"gram": k, "type": "Linear" if g.ndim == 2
                            else "Conv2d", "shape": list(g.shape)}
                        for k, g in grams.items()}
    tensors = {}
    for k, g in grams.items():
        tensors[k + ".gram"] = np.ascontiguousarray(g, dtype)
        tensors[k + ".count"] = np.array(1000, "<i8")
    header = {"__metadata__": meta or {"format": "decompd.calibration",
                                       "version": "1",
                                       "layers": json.dumps(layers)}}
    blobs, off = [], 0
    for k, a in tensors.items():
        b = a.tobytes()
        header[k] = {"dtype": {"f8": "F64", "f4": "F32", "i8": "I64"}[
                         a.dtype.str[1:]],
                     "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(48, 24)


@pytest.fixture
def calibrated(tmp_path):
    """A conv and a Linear, their specs, and Grams of correlated inputs."""
    torch.manual_seed(0)
    net = Head()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    spec = {"layers": [
        conv_spec("conv", net.conv),
        {"name": "fc", "type": "Linear", "in_features": 48,
         "out_features": 24, "bias": True}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 48)) @ (rng.standard_normal((48, 48)) *
                                          np.logspace(0, -2, 48))
    P = rng.standard_normal((2, 300, 36)) @ (rng.standard_normal((36, 36)) *
                                             np.logspace(0, -1.5, 36))
    grams = {"fc": X.T @ X, "conv": np.stack([p.T @ p for p in P])}
    return net, tmp_path, grams


def test_calibration_whitens_conv_and_linear_to_numpys_optimum(calibrated):
    net, d, grams = calibrated
    write_calibration(d / "cal.safetensors", grams)
    R = 6
    policy = json.dumps({"name": "fixed", "rank": R, "require_cheaper": False,
                         "types": ["Conv2d", "Linear"], "methods": ["channel"]})
    run("decompose", "--weights", d / "w.pth", "--spec", d / "spec.json",
        "--out", d / "out", "--policy", policy, "--calibration",
        d / "cal.safetensors", check=0)
    info = json.loads((d / "out" / "decompose_info.json").read_text())
    sd = torch.load(d / "out" / "decomposed_weights.pth", weights_only=True)
    assert info["calibration"]["digest"].startswith("sha256:")
    assert info["calibration"]["layers"] == 2
    layers = {l["name"]: l for l in info["layers"]}
    assert layers["fc"]["method"] == "svd"
    assert layers["conv"]["method"] == "channel_svd"
    # Linear: ‖(W − W̃)S‖/‖WS‖ from the written factors = numpy's optimum.
    W = net.fc.weight.detach().double().numpy()
    Wt = sd["fc.1.weight"].double().numpy() @ sd["fc.0.weight"].double().numpy()
    S = np.linalg.cholesky(grams["fc"])
    s = np.linalg.svd(W @ S, compute_uv=False)
    opt = np.sqrt((s[R:] ** 2).sum() / (s ** 2).sum())
    got = np.linalg.norm((W - Wt) @ S) / np.linalg.norm(W @ S)
    assert got <= 1.01 * opt + 1e-6
    assert abs(layers["fc"]["stats"]["output_relative_error"] - got) <= 1e-4
    # and better on the data than plain SVD at the same rank
    u, sv, vt = np.linalg.svd(W)
    plain = np.linalg.norm((W - (u[:, :R] * sv[:R]) @ vt[:R]) @ S) / \
        np.linalg.norm(W @ S)
    assert got < plain
    # Conv, group by group over the patch Grams, through the pair's weights.
    Wc = net.conv.weight.detach().double().numpy().reshape(2, 8, 36)
    f = sd["conv.0.weight"].double().numpy().reshape(2, R, 36)
    g = sd["conv.1.weight"].double().numpy().reshape(2, 8, R)
    tot = tail = err = 0.0
    for j in range(2):
        Sj = np.linalg.cholesky(grams["conv"][j])
        sj = np.linalg.svd(Wc[j] @ Sj, compute_uv=False)
        tot += (sj ** 2).sum()
        tail += (sj[R:] ** 2).sum()
        err += np.linalg.norm((Wc[j] - g[j] @ f[j]) @ Sj) ** 2
    assert np.sqrt(err / tot) <= 1.01 * np.sqrt(tail / tot) + 1e-6


BAD_CALIBRATIONS = {
    "wrong_size": (lambda g: {**g, "fc": g["fc"][:40, :40]}, None, "fc"),
    "not_finite": (lambda g: {**g, "fc": np.where(np.eye(48) > 0, np.nan,
                                                  g["fc"])}, None, "fc"),
    "not_symmetric": (lambda g: {**g, "fc": g["fc"] + np.triu(
        np.ones((48, 48)), 1)}, None, "not symmetric"),
    "unknown_layer": (lambda g: g, {"ghost": {"gram": "fc", "type": "Linear"}},
                      "ghost"),
}


@pytest.mark.parametrize("dtype", ["<f8", "<f4"])
@pytest.mark.parametrize("case", sorted(BAD_CALIBRATIONS))
def test_a_bad_calibration_exits_3_naming_the_layer_and_leaves_nothing(
        case, dtype, calibrated):
    net, d, grams = calibrated
    edit, layers, needle = BAD_CALIBRATIONS[case]
    write_calibration(d / "cal.safetensors", edit(grams), layers, dtype=dtype)
    p = run("decompose", "--weights", d / "w.pth", "--spec", d / "spec.json",
            "--out", d / "out", "--calibration", d / "cal.safetensors",
            "--policy", '{"name": "fixed", "rank": 4, "types": ["Conv2d", "Linear"]}',
            check=3)
    assert "calibration" in p.stderr and needle in p.stderr, p.stderr
    assert not (d / "out").exists()


def test_float32_grams_whiten_as_float64_ones_do(calibrated):
    """A calibration of float32 Grams (half the file: LLaMA-7B's are 22 GB
    so) gives the float64 one's ranks and output errors to float32's
    precision."""
    net, d, grams = calibrated
    policy = json.dumps({"name": "fixed", "rank": 6, "require_cheaper": False,
                         "types": ["Conv2d", "Linear"], "methods": ["channel"]})
    errs = {}
    for dt in ("<f8", "<f4"):
        write_calibration(d / f"cal{dt[1:]}.safetensors", grams, dtype=dt)
        run("decompose", "--weights", d / "w.pth", "--spec", d / "spec.json",
            "--out", d / dt[1:], "--policy", policy, "--calibration",
            d / f"cal{dt[1:]}.safetensors", check=0)
        info = json.loads((d / dt[1:] / "decompose_info.json").read_text())
        errs[dt] = {l["name"]: (l["rank"], l["stats"]["output_relative_error"])
                    for l in info["layers"]}
    assert errs["<f8"].keys() == errs["<f4"].keys() == {"fc", "conv"}
    for name, (rank, err) in errs["<f8"].items():
        assert errs["<f4"][name][0] == rank
        assert abs(errs["<f4"][name][1] - err) <= 1e-4 * err, (name, errs)


def test_a_weight_file_is_not_a_calibration(calibrated):
    net, d, grams = calibrated
    p = run("decompose", "--weights", d / "w.pth", "--spec", d / "spec.json",
            "--out", d / "out", "--calibration", d / "w.pth", check=3)
    assert "not a decompd calibration" in p.stderr, p.stderr
    assert not (d / "out").exists()


# --- latency profile -----------------------------------------------------------

class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.fast = nn.Conv2d(16, 16, 3, padding=1)
        self.slow = nn.Conv2d(16, 16, 3, padding=1)


def pair_profile():
    """`fast` (10 ms) gets faster with every candidate at low rank; every
    candidate of `slow` (1 ms) is slower than the layer itself."""
    def layer(time, chan, spat):
        return {"type": "Conv2d", "weight_shape": [16, 16, 3, 3], "time": time,
                "candidates": [
                    {"method": "channel_svd", "ranks": [1, 8, 16], "times": chan},
                    {"method": "spatial_svd", "order": "vertical_first",
                     "ranks": [1, 24, 48], "times": spat}]}
    return {"format": "decompd.profile", "version": 1, "device_name": "test cpu",
            "dtype": "float32", "input_shape": [8, 16, 32, 32],
            "layers": {"fast": layer(0.010, [0.001, 0.004, 0.012], [0.002, 0.006, 0.014]),
                       "slow": layer(0.001, [0.002, 0.005, 0.009], [0.003, 0.01, 0.02])}}


@pytest.fixture
def pair(tmp_path):
    torch.manual_seed(0)
    net = Pair()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    spec = {"layers": [conv_spec("fast", net.fast), conv_spec("slow", net.slow)]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path


def test_profile_leaves_the_slower_layer_alone_and_records_latencies(pair):
    d = pair
    (d / "profile.json").write_text(json.dumps(pair_profile()))
    run("decompose", "--weights", d / "w.pth", "--spec", d / "spec.json",
        "--out", d / "out", "--policy", '{"name": "fixed", "rank": 4}',
        "--profile", d / "profile.json", check=0)
    info = json.loads((d / "out" / "decompose_info.json").read_text())
    import hashlib
    digest = "sha256:" + hashlib.sha256((d / "profile.json").read_bytes()).hexdigest()
    assert info["profile"]["digest"] == digest
    assert info["profile"]["device_name"] == "test cpu"
    assert [l["name"] for l in info["layers"]] == ["fast"]
    assert "max_slowdown" in {s["name"]: s["reason"] for s in info["skipped"]}["slow"]
    st = info["layers"][0]["stats"]
    assert st["latency_before"] == pytest.approx(0.010)
    assert 0 < st["latency_after"] < 0.010
    assert info["summary"]["latency_before"] == pytest.approx(0.011)
    assert info["summary"]["latency_after"] == pytest.approx(st["latency_after"] + 0.001)
    # without the profile the same policy decomposes both
    run("decompose", "--weights", d / "w.pth", "--spec", d / "spec.json",
        "--out", d / "plain", "--policy", '{"name": "fixed", "rank": 4}', check=0)
    plain = json.loads((d / "plain" / "decompose_info.json").read_text())
    assert sorted(l["name"] for l in plain["layers"]) == ["fast", "slow"]


def test_a_bad_profile_exits_3_naming_the_layer_and_leaves_nothing(pair):
    d = pair
    for edit, needle in (
            (lambda p: p["layers"].update(ghost=p["layers"].pop("slow")), "ghost"),
            (lambda p: p["layers"]["fast"].update(time=-1), "layer fast"),
            (lambda p: p["layers"]["slow"].update(candidates=[]), "layer slow")):
        prof = pair_profile()
        edit(prof)
        (d / "profile.json").write_text(json.dumps(prof))
        p = run("decompose", "--weights", d / "w.pth", "--spec", d / "spec.json",
                "--out", d / "out", "--profile", d / "profile.json", check=3)
        assert "profile" in p.stderr and needle in p.stderr, p.stderr
        assert not (d / "out").exists()
