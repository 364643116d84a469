"""channel_svd and Linear svd through decompd.tensor_decompose, on the real
engine, checked with PyTorch's own Conv2d/Linear forward and numpy:

- at full rank the pair (an nn.Sequential of the kh×kw conv and the 1×1
  conv, or of two nn.Linear) computes what the original computes, over
  strides, paddings (numbers, 'same', 'valid'), dilations, groups, padding
  modes and bias on/off, in float32 and float64;
- at rank R the pair's weight error is numpy's Eckart–Young optimum of the
  reshape (per group O × I·kh·kw; out × in);
- with a calibration (decompd.calibrate), the output error on the
  calibration data, ‖(W − W̃)Xᵀ‖_F measured through the layers' forward,
  is numpy's whitened (SVD-LLM) optimum within 1% and never worse than
  plain SVD's at the same rank; the info file reports it;
- decompose_network rebuilds the same structure from the info file and the
  saved weights load with strict=True; it checks Linear fields too and
  never half-applies; the AMCT semantics of Conv2d-only policies stay.
"""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import decompd
from decompd.spec import layer_spec, walk
from decompd.tensor_decompose import auto_decomposition, decompose_network
from tensor_decompose_common import ModesNet

BOTH = ["Conv2d", "Linear"]
FULL_CHANNEL = {"name": "ratio", "ratio": 1.0, "require_cheaper": False,
                "methods": ["channel"], "types": BOTH}


def fixed(rank, **kw):
    return dict({"name": "fixed", "rank": rank, "require_cheaper": False,
                 "methods": ["channel"], "types": BOTH}, **kw)


def rel(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


CONVS = [
    # (Cin, Cout, kwargs, H, W)
    (8, 12, dict(kernel_size=3, padding=1), 9, 8),
    (8, 12, dict(kernel_size=(3, 5), stride=2, padding=(1, 2)), 9, 11),
    (8, 8, dict(kernel_size=(4, 2), padding="same", dilation=2), 9, 8),
    (6, 10, dict(kernel_size=(4, 3), padding="same", bias=False), 7, 7),
    (8, 12, dict(kernel_size=3, padding="valid", stride=(2, 1)), 9, 8),
    (8, 12, dict(kernel_size=3, padding=2, dilation=2, stride=2), 11, 10),
    (12, 12, dict(kernel_size=3, padding=1, groups=3), 7, 7),
    (12, 12, dict(kernel_size=3, padding=1, groups=12), 7, 7),
    (12, 18, dict(kernel_size=(3, 1), padding=(1, 0), groups=3,
                  bias=False), 7, 6),
    (16, 24, dict(kernel_size=1), 6, 6),
    (16, 24, dict(kernel_size=1, stride=2, groups=4), 7, 6),
    (8, 12, dict(kernel_size=3, padding=1, padding_mode="reflect"), 7, 8),
    (8, 12, dict(kernel_size=(5, 3), padding=(2, 1),
                 padding_mode="replicate", bias=False), 8, 7),
    (8, 12, dict(kernel_size=3, padding=(1, 2), padding_mode="circular",
                 stride=2), 8, 9),
    (8, 8, dict(kernel_size=(4, 2), padding="same", dilation=(1, 2),
                padding_mode="reflect", groups=2), 9, 8),
]
CONV_IDS = ["-".join(f"{k}={v}" for k, v in c[2].items()).replace(" ", "")
            for c in CONVS]

LINEARS = [(32, 48, True), (48, 32, False), (20, 20, True), (7, 64, True)]


def make_conv(case, dtype=torch.float32, seed=0):
    cin, cout, kw, H, W = case
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, **kw).to(dtype)
    with torch.no_grad():  # a bias large enough to matter
        if conv.bias is not None:
            conv.bias.normal_()
    return conv, torch.randn(3, cin, H, W, dtype=dtype)


def conv_pair_weights(seq):
    """Per group [(A_j (R × I·kh·kw), B_j (O × R))] of a channel pair."""
    first, second = seq
    g = first.groups
    A = first.weight.detach().double()
    B = second.weight.detach().double()[:, :, 0, 0]
    R = A.shape[0] // g
    O = B.shape[0] // g
    return [(A[j * R:(j + 1) * R].reshape(R, -1), B[j * O:(j + 1) * O])
            for j in range(g)]


def check_channel_structure(seq, conv, R):
    assert isinstance(seq, nn.Sequential) and len(seq) == 2
    first, second = seq
    assert type(first) is nn.Conv2d and type(second) is nn.Conv2d
    g = conv.groups
    assert (first.in_channels, first.out_channels) == (conv.in_channels,
                                                       g * R)
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(first, attr) == getattr(conv, attr), attr
    assert first.bias is None
    assert (second.in_channels, second.out_channels) == (g * R,
                                                         conv.out_channels)
    assert second.kernel_size == (1, 1) and second.stride == (1, 1)
    assert second.padding == (0, 0) and second.dilation == (1, 1)
    assert second.groups == g and second.padding_mode == "zeros"
    assert (second.bias is None) == (conv.bias is None)
    if conv.bias is not None:
        assert torch.equal(second.bias, conv.bias)


# --- full rank: the pair computes what the layer computes -----------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONVS, ids=CONV_IDS)
def test_channel_pair_at_full_rank_reproduces_the_conv(case, dtype):
    conv, x = make_conv(case, dtype)
    before = copy.deepcopy(conv.state_dict())
    with torch.no_grad():
        ref = conv(x)
    seq, changes = auto_decomposition(conv, policy=FULL_CHANNEL)
    assert changes == {"": ["0", "1"]}
    assert all(torch.equal(v, conv.state_dict()[k])
               for k, v in before.items())  # the argument is untouched
    kh, kw = conv.kernel_size
    g = conv.groups
    full = min(conv.out_channels // g, conv.in_channels // g * kh * kw)
    check_channel_structure(seq, conv, full)
    assert seq[0].weight.dtype == dtype
    with torch.no_grad():
        out = seq(x)
    err = rel(out, ref)
    print(f"{conv}: full rank {full}, relative error {err:.2e}")
    assert err <= (1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64],
                         ids=["f32", "f64"])
@pytest.mark.parametrize("fin,fout,bias", LINEARS,
                         ids=[f"{a}x{b}-{'bias' if c else 'nobias'}"
                              for a, b, c in LINEARS])
def test_linear_pair_at_full_rank_reproduces_the_linear(fin, fout, bias,
                                                        dtype):
    torch.manual_seed(0)
    fc = nn.Linear(fin, fout, bias=bias).to(dtype)
    x = torch.randn(2, 5, fin, dtype=dtype)  # tokens
    with torch.no_grad():
        ref = fc(x)
    seq, changes = auto_decomposition(fc, policy=FULL_CHANNEL)
    assert changes == {"": ["0", "1"]}
    first, second = seq
    R = min(fin, fout)
    assert type(first) is nn.Linear and type(second) is nn.Linear
    assert (first.in_features, first.out_features) == (fin, R)
    assert (second.in_features, second.out_features) == (R, fout)
    assert first.bias is None and (second.bias is None) == (not bias)
    with torch.no_grad():
        out = seq(x)
    err = rel(out, ref)
    print(f"Linear {fin}->{fout}: relative error {err:.2e}")
    assert err <= (1e-5 if dtype == torch.float32 else 1e-10)


# --- rank R: the Eckart–Young optimum -------------------------------------


def group_matrices(conv):
    W = conv.weight.detach().double().numpy()
    g = conv.groups
    O = W.shape[0] // g
    return [W[j * O:(j + 1) * O].reshape(O, -1) for j in range(g)]


@pytest.mark.parametrize("case", CONVS, ids=CONV_IDS)
def test_channel_pair_at_rank_r_is_the_eckart_young_optimum(case):
    conv, _ = make_conv(case, torch.float64)
    mats = group_matrices(conv)
    full = min(mats[0].shape)
    R = max(1, full // 3)
    seq, _ = auto_decomposition(conv, policy=fixed(R))
    check_channel_structure(seq, conv, R)
    err2 = want2 = total = 0.0
    for (A, B), M in zip(conv_pair_weights(seq), mats):
        err2 += np.sum((M - (B @ A).numpy()) ** 2)
        s = np.linalg.svd(M, compute_uv=False)
        want2 += np.sum(s[R:] ** 2)
        total += np.sum(M ** 2)
    err, want = np.sqrt(err2 / total), np.sqrt(want2 / total)
    print(f"{conv}: rank {R} of {full}: error {err:.6f}, optimum {want:.6f}")
    assert err == pytest.approx(want, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("fin,fout,bias", LINEARS,
                         ids=[f"{a}x{b}" for a, b, _ in LINEARS])
def test_linear_pair_at_rank_r_is_the_eckart_young_optimum(fin, fout, bias):
    torch.manual_seed(1)
    fc = nn.Linear(fin, fout, bias=bias).double()
    R = max(1, min(fin, fout) // 4)
    seq, _ = auto_decomposition(fc, policy=fixed(R))
    W = fc.weight.detach().numpy()
    Wt = (seq[1].weight.detach() @ seq[0].weight.detach()).numpy()
    s = np.linalg.svd(W, compute_uv=False)
    err = np.linalg.norm(W - Wt) / np.linalg.norm(W)
    want = np.sqrt(np.sum(s[R:] ** 2)) / np.linalg.norm(W)
    assert err == pytest.approx(want, rel=1e-6)
    if bias:
        assert torch.equal(seq[1].bias, fc.bias)


# --- calibration: the whitened optimum --------------------------------------


def anisotropic(shape, dim, seed):
    """Inputs whose channels/features are strongly correlated, with a few
    dominant directions: where whitening matters."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    scale = torch.logspace(0, -3, dim, dtype=torch.float64)
    z = torch.randn(*shape, generator=g, dtype=torch.float64)
    zdim = z.movedim(-3 if len(shape) == 4 else -1, -1)
    out = (zdim * scale) @ mix
    return out.movedim(-1, -3 if len(shape) == 4 else -1).contiguous()


def whitened_optimum(M, G, R):
    """(whitened optimum, plain SVD's) of ‖(M − M̃)Xᵀ‖² for XᵀX = G."""
    w, V = np.linalg.eigh(G)
    S = V * np.sqrt(np.clip(w, 0, None))  # S Sᵀ = G
    s = np.linalg.svd(M @ S, compute_uv=False)
    best = np.sum(s[R:] ** 2)
    U, sp, Vt = np.linalg.svd(M, full_matrices=False)
    D = M - (U[:, :R] * sp[:R]) @ Vt[:R]
    plain = np.trace(D @ G @ D.T)
    return best, plain, np.sum(s ** 2)


def measured_output_error2(layer, seq, batches):
    """Σ ‖y − ỹ‖² over the calibration data, through the forward."""
    tot = 0.0
    with torch.no_grad():
        for x in batches:
            tot += float(((layer(x) - seq(x)).double() ** 2).sum())
    return tot


CAL_CONVS = [CONVS[0], CONVS[1], CONVS[6], CONVS[9], CONVS[11], CONVS[2]]


@pytest.mark.parametrize("case", CAL_CONVS,
                         ids=[CONV_IDS[CONVS.index(c)] for c in CAL_CONVS])
def test_calibrated_channel_pair_reaches_the_whitened_optimum(case):
    cin, cout, kw, H, W = case
    conv, _ = make_conv(case, torch.float64)
    batches = [anisotropic((4, cin, H, W), cin, s) for s in range(3)]
    cal = decompd.calibrate(conv, batches)
    mats = group_matrices(conv)
    full = min(mats[0].shape)
    R = max(1, full // 4)
    seq, _ = auto_decomposition(conv, calibration=cal, policy=fixed(R))
    check_channel_structure(seq, conv, R)
    G = cal.gram("conv").numpy()
    best = plain = total = 0.0
    for j, M in enumerate(mats):
        b, p, t = whitened_optimum(M, G[j], R)
        best, plain, total = best + b, plain + p, total + t
    got = measured_output_error2(conv, seq, batches)
    print(f"{conv}: rank {R}: output error² {got:.6g}, whitened optimum "
          f"{best:.6g}, plain SVD {plain:.6g}")
    assert np.sqrt(got) == pytest.approx(np.sqrt(best), rel=0.01)
    assert got <= plain * (1 + 1e-9)


@pytest.mark.parametrize("fin,fout,bias", LINEARS,
                         ids=[f"{a}x{b}" for a, b, _ in LINEARS])
def test_calibrated_linear_pair_reaches_the_whitened_optimum(fin, fout, bias,
                                                             tmp_path):
    torch.manual_seed(2)
    fc = nn.Linear(fin, fout, bias=bias).double()
    batches = [anisotropic((3, 9, fin), fin, s) for s in range(4)]
    path = tmp_path / "cal.safetensors"
    digest = decompd.calibrate(fc, batches).save(path)
    R = max(1, min(fin, fout) // 4)
    info_path = tmp_path / "info.json"
    seq, _ = auto_decomposition(fc, str(info_path), calibration=str(path),
                                policy=fixed(R))
    G = decompd.Calibration.load(path).gram("linear").numpy()
    M = fc.weight.detach().numpy()
    best, plain, total = whitened_optimum(M, G, R)
    got = measured_output_error2(fc, seq, batches)
    print(f"Linear {fin}->{fout} rank {R}: output error² {got:.6g}, "
          f"whitened optimum {best:.6g}, plain SVD {plain:.6g}")
    assert np.sqrt(got) == pytest.approx(np.sqrt(best), rel=0.01)
    assert got <= plain * (1 + 1e-9)
    info = json.loads(info_path.read_text())
    assert info["calibration"] == {"digest": digest, "layers": 1}
    (layer,) = info["layers"]
    assert layer["method"] == "svd"
    stats = layer["stats"]
    assert stats["samples"] == 3 * 9 * 4
    assert stats["output_relative_error"] == pytest.approx(
        np.sqrt(best / total), rel=0.01)
    assert stats["output_energy_retained"] == pytest.approx(
        1 - best / total, rel=0.01, abs=1e-9)


class Attn(nn.Module):
    """q/k/v read one tensor (one shared Gram); o another; a conv stem."""

    def __init__(self, d=24):
        super().__init__()
        self.stem = nn.Conv2d(3, d, 3, padding=1)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.head = nn.Linear(d, 5)

    def forward(self, img):
        x = self.stem(img).flatten(2).transpose(1, 2)  # tokens
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), -1)
        h = self.o(a @ self.v(x)) + x
        return self.head(h.mean(1))


def attn_batches(n=3):
    return [anisotropic((2, 3, 6, 6), 3, s).float() for s in range(n)]


def test_shared_gram_layers_are_each_whitened(tmp_path):
    torch.manual_seed(3)
    net = Attn()
    batches = attn_batches()
    cal = decompd.calibrate(net, batches)
    assert [cal.key(n) for n in ("q", "k", "v")] == ["q", "q", "q"]
    orig = copy.deepcopy(net)
    R = 4
    net, changes = auto_decomposition(
        net, str(tmp_path / "info.json"), calibration=cal,
        policy=fixed(R, include=["q", "k", "v", "o"]))
    assert set(changes) == {"q", "k", "v", "o"}
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["calibration"]["digest"] == cal.digest
    methods = {l["name"]: l["method"] for l in info["layers"]}
    assert methods == {"q": "svd", "k": "svd", "v": "svd", "o": "svd"}
    for name in ("q", "k", "v", "o"):
        M = getattr(orig, name).weight.detach().double().numpy()
        seq = getattr(net, name)
        Wt = (seq[1].weight.detach() @ seq[0].weight.detach()).double()
        D = M - Wt.numpy()
        G = cal.gram(name).numpy()
        best, plain, _ = whitened_optimum(M, G, R)
        got = np.trace(D @ G @ D.T)
        print(f"{name}: {got:.6g} (optimum {best:.6g}, plain {plain:.6g})")
        assert np.sqrt(got) == pytest.approx(np.sqrt(best), rel=0.01)
        assert got <= plain * (1 + 1e-6)


def test_a_calibration_that_does_not_fit_the_model_is_refused(tmp_path):
    cal = decompd.calibrate(Attn(), attn_batches(1))
    other = nn.Sequential(nn.Linear(24, 24))
    with pytest.raises(decompd.CalibrationError, match="'stem'"):
        auto_decomposition(other, calibration=cal, policy=fixed(2))
    net = Attn()
    net.q = nn.Linear(24, 12)  # same input width: the Gram still fits
    auto_decomposition(net, calibration=cal, policy=fixed(2))
    net = Attn()
    net.stem = nn.Conv2d(3, 24, 5, padding=2)
    fp = copy.deepcopy(net.state_dict())
    with pytest.raises(decompd.CalibrationError, match="'stem'.*shape"):
        auto_decomposition(net, calibration=cal, policy=fixed(2))
    assert type(net.stem) is nn.Conv2d and all(
        torch.equal(v, net.state_dict()[k]) for k, v in fp.items())
    # With a service, the same check runs here before anything is sent
    # (nothing listens on port 9: reaching it would be a ConnectError).
    with pytest.raises(decompd.CalibrationError, match="'stem'.*shape"):
        auto_decomposition(net, calibration=cal, policy=fixed(2),
                           server="http://127.0.0.1:9")


# --- info files and decompose_network ----------------------------------------


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2, groups=2)
        self.proj = nn.Conv2d(32, 32, 1, bias=False)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10, bias=False)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.proj(x).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


MIXED_POLICY = fixed(3, methods=["spatial", "channel"])


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    torch.manual_seed(4)
    net = Mixed()
    x = torch.randn(2, 3, 16, 16)
    cal = decompd.calibrate(net, [x])
    net, changes = auto_decomposition(net, str(d / "info.json"),
                                      calibration=cal, policy=MIXED_POLICY)
    torch.save(net.state_dict(), d / "weights.pth")
    with torch.no_grad():
        out = net.eval()(x)
    return d, net, changes, x, out


def structure(model):
    return [(n, type(m).__name__, tuple(p.shape for p in m.parameters(
        recurse=False))) for n, m in model.named_modules()]


def test_decompose_network_rebuilds_channel_and_linear_pairs(mixed_run):
    d, net, changes, x, out = mixed_run
    assert changes == {n: [f"{n}.0", f"{n}.1"]
                       for n in ("conv1", "conv2", "proj", "fc1", "fc2")}
    info = json.loads((d / "info.json").read_text())
    methods = {l["name"]: l["method"] for l in info["layers"]}
    assert methods == {"conv1": "channel_svd", "conv2": "channel_svd",
                       "proj": "channel_svd", "fc1": "svd", "fc2": "svd"}
    fc1 = next(l for l in info["layers"] if l["name"] == "fc1")
    assert fc1["original"] == {"type": "Linear", "in_features": 32,
                               "out_features": 64, "bias": True}
    assert [dict((k, v) for k, v in m.items() if k != "name")
            for m in fc1["modules"]] == [
        {"type": "Linear", "in_features": 32, "out_features": 3,
         "bias": False},
        {"type": "Linear", "in_features": 3, "out_features": 64,
         "bias": True}]
    torch.manual_seed(5)
    fresh = Mixed()
    fresh, changes2 = decompose_network(fresh, str(d / "info.json"))
    assert changes2 == changes
    assert structure(fresh) == structure(net)
    fresh.load_state_dict(torch.load(d / "weights.pth"), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), out)


def test_bare_linear_round_trip(tmp_path):
    torch.manual_seed(6)
    fc = nn.Linear(16, 12)
    seq, changes = auto_decomposition(fc, str(tmp_path / "i.json"),
                                      policy=fixed(3))
    assert changes == {"": ["0", "1"]} and type(fc) is nn.Linear
    info = json.loads((tmp_path / "i.json").read_text())
    assert [l["name"] for l in info["layers"]] == ["linear"]
    torch.save(seq.state_dict(), tmp_path / "w.pth")
    seq2, changes2 = decompose_network(nn.Linear(16, 12),
                                       str(tmp_path / "i.json"))
    assert changes2 == changes
    seq2.load_state_dict(torch.load(tmp_path / "w.pth"), strict=True)
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(seq2(x), seq(x))


def fingerprint(model):
    return ([(n, type(m), id(m)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_unchanged(model, fp):
    mods, sd = fingerprint(model)
    assert mods == fp[0]
    assert sd.keys() == fp[1].keys()
    assert all(torch.equal(sd[k], fp[1][k]) for k in sd)


@pytest.mark.parametrize("attr,value,match", [
    ("fc2", nn.Linear(64, 11, bias=False), "fc2: out_features is 11"),
    ("fc2", nn.Linear(64, 10, bias=True), "fc2: bias is true"),
    ("fc1", nn.Linear(33, 64), "fc1: in_features is 33"),
    ("fc2", nn.Conv2d(64, 10, 1, bias=False), "fc2: .*Conv2d, not a Linear"),
    ("proj", nn.Linear(32, 32, bias=False), "proj: .*Linear, not a Conv2d"),
    ("proj", nn.Conv2d(32, 32, 1, bias=False, stride=2), "proj: stride"),
    ("fc2", nn.Sequential(nn.Linear(64, 3, bias=False), nn.Linear(3, 10)),
     "fc2: .*already decomposed"),
])
def test_decompose_network_checks_every_layer_first(mixed_run, attr, value,
                                                    match):
    d = mixed_run[0]
    net = Mixed()
    setattr(net, attr, value)
    fp = fingerprint(net)
    with pytest.raises(ValueError, match=match) as e:
        decompose_network(net, str(d / "info.json"))
    print(e.value)
    assert_unchanged(net, fp)  # never half-applied


# The engine's info reader (decomp_info_normalize) or decompose_network
# itself refuses these; either way the message names the layer.
@pytest.mark.parametrize("edit,match", [
    (lambda l: l["modules"][1].__setitem__("in_features", 4),
     r"fc1\b.*in_features.* 4"),
    (lambda l: l["modules"][0].__setitem__("type", "Conv2d"),
     r"fc1\b.*Conv2d"),
    (lambda l: l.__setitem__("method", "tucker"), r"fc1\b.*method"),
    (lambda l: l.__setitem__("method", "channel_svd"),
     r"fc1\b.*(Linear|Conv2d)"),
], ids=["module_field", "module_type", "unknown_method", "wrong_method"])
def test_decompose_network_checks_the_recorded_modules(mixed_run, tmp_path,
                                                       edit, match):
    d = mixed_run[0]
    info = json.loads((d / "info.json").read_text())
    edit(next(l for l in info["layers"] if l["name"] == "fc1"))
    path = tmp_path / "info.json"
    path.write_text(json.dumps(info))
    net = Mixed()
    fp = fingerprint(net)
    with pytest.raises(ValueError, match=match) as e:
        decompose_network(net, str(path))
    print(e.value)
    assert_unchanged(net, fp)


def test_channel_modules_recorded_in_the_info_file(mixed_run):
    d = mixed_run[0]
    info = json.loads((d / "info.json").read_text())
    conv2 = next(l for l in info["layers"] if l["name"] == "conv2")
    first, second = conv2["modules"]
    assert first["kernel_size"] == [3, 3] and first["stride"] == [2, 2]
    assert first["groups"] == 2 and first["out_channels"] == 6
    assert first["bias"] is False
    assert second["kernel_size"] == [1, 1] and second["stride"] == [1, 1]
    assert second["padding"] == [0, 0] and second["padding_mode"] == "zeros"
    assert second["in_channels"] == 6 and second["groups"] == 2
    assert second["bias"] is True
    assert conv2["stats"]["samples"] == 2 * 8 * 8


# --- what stays as it was ----------------------------------------------------


class ModesHead(ModesNet):
    """The reference tool's convs, with a Linear head."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 64)

    def forward(self, x):
        return self.fc2(self.fc1(super().forward(x).mean((2, 3))))


def test_default_and_amct_policies_leave_linear_layers_alone():
    # The default policy's types stay Conv2d; amct stays the reference's
    # rules exactly: spatial pairs of its eligible k×k convs only.
    for policy in (None, "amct"):
        torch.manual_seed(7)
        net = ModesHead()
        net, changes = auto_decomposition(net, policy=policy)
        assert changes and not {"fc1", "fc2"} & set(changes)
        assert type(net.fc1) is nn.Linear and type(net.fc2) is nn.Linear
        if policy == "amct":
            assert set(changes) == {"a", "b", "c", "d"}
            for name in changes:
                assert 1 in getattr(net, name)[0].kernel_size


def test_the_spec_lists_linear_layers_with_their_fields():
    class MyLinear(nn.Linear):
        pass

    m = nn.Sequential(nn.Linear(4, 3), MyLinear(3, 3), nn.Linear(3, 2, False),
                      nn.MultiheadAttention(4, 2))
    spec = layer_spec(walk(m))["layers"]
    by = {l["name"]: l for l in spec}
    assert by["0"] == {"name": "0", "type": "Linear", "in_features": 4,
                       "out_features": 3, "bias": True}
    assert by["2"]["bias"] is False
    assert by["1"]["type"].endswith("MyLinear") and "in_features" not in by["1"]
    assert by["3.out_proj"]["type"] == "NonDynamicallyQuantizableLinear"


def test_float32_grams_whiten_as_well():
    torch.manual_seed(8)
    fc = nn.Linear(24, 16).double()
    batches = [anisotropic((4, 6, 24), 24, s) for s in range(3)]
    cal = decompd.calibrate(fc, batches, dtype=torch.float32)
    seq, _ = auto_decomposition(fc, calibration=cal, policy=fixed(4))
    G = decompd.calibrate(fc, batches).gram("linear").numpy()
    best, plain, _ = whitened_optimum(fc.weight.detach().numpy(), G, 4)
    got = measured_output_error2(fc, seq, batches)
    assert np.sqrt(got) == pytest.approx(np.sqrt(best), rel=0.01)
    assert got < plain


def test_spatial_only_policy_keeps_convs_weight_only(tmp_path):
    # With a calibration, layers that have a Gram take the
    # channel/svd methods unless the policy's methods is ["spatial"].
    torch.manual_seed(9)
    conv = nn.Conv2d(8, 16, 3, padding=1).double()
    cal = decompd.calibrate(conv, [anisotropic((2, 8, 6, 6), 8, 0)])
    path = tmp_path / "info.json"
    plain, _ = auto_decomposition(conv, str(tmp_path / "plain.json"),
                                  policy=fixed(3, methods=["spatial"]))
    seq, _ = auto_decomposition(conv, str(path), calibration=cal,
                                policy=fixed(3, methods=["spatial"]))
    (layer,) = json.loads(path.read_text())["layers"]
    assert layer["method"] == "spatial_svd"
    assert "output_relative_error" not in layer["stats"]
    for a, b in zip(seq.parameters(), plain.parameters()):
        assert torch.equal(a, b)  # the calibration changes nothing
