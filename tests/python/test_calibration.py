"""decompd.calibrate and Calibration, without the engine's decomposition:

- a conv's Gram is the Gram of exactly the patches the conv reads, checked
  against an independent numpy computation (np.pad and stride tricks, not
  F.unfold) whose patches are themselves checked to reproduce PyTorch's own
  conv output, over every stride, padding (numbers, 'valid', 'same'),
  dilation, groups and padding mode;
- a Linear's Gram flattens every leading dim (3-D token inputs);
- q/k/v-style layers reading one tensor share one Gram, different inputs do
  not, a layer reading a tensor twice counts it twice; sample counts;
- save -> load is bit-exact, the file is what an independent reader (JSON
  header + numpy.frombuffer) and the engine's own safetensors reader see;
- every bad file gets a CalibrationError naming the layer (or, for damage
  before any layer can be read, the file);
- the model's train/eval flags and hooks are restored after a batch raises.
"""

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn

import decompd
from decompd import Calibration, CalibrationError, calibrate

# --- the independent reference ----------------------------------------------

NP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
            "circular": "wrap"}


def pads_of(conv):
    """(top, bottom, left, right) as documented for nn.Conv2d: numbers,
    'valid' = 0, 'same' = d·(k−1) split with the extra pixel after."""
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if conv.padding == "valid":
        return 0, 0, 0, 0
    if conv.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = conv.padding
    return ph, ph, pw, pw


def np_patches(x, conv):
    """[g, rows, n] patches of numpy input x [N, C, H, W] (float64), a
    patch's index being (c·kh + h)·kw + w within its group."""
    t, b, l, r = pads_of(conv)
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)),
                mode=NP_MODES[conv.padding_mode])
    N, C, Hp, Wp = xp.shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    Ho = (Hp - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wp - dw * (kw - 1) - 1) // sw + 1
    s = xp.strides
    win = np.lib.stride_tricks.as_strided(
        xp, shape=(N, C, Ho, Wo, kh, kw),
        strides=(s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw),
        writeable=False)
    g = conv.groups
    cg = C // g
    out = []
    for j in range(g):
        p = win[:, j * cg:(j + 1) * cg].transpose(0, 2, 3, 1, 4, 5)
        out.append(p.reshape(N * Ho * Wo, cg * kh * kw))
    return np.stack(out), (Ho, Wo)


def check_patches_match_conv(x, conv):
    """The reference patches times the kernel give PyTorch's conv output:
    they are what the conv reads."""
    P, (Ho, Wo) = np_patches(x.double().numpy(), conv)
    with torch.no_grad():
        y = conv.double()(x.double()).numpy()
    W = conv.weight.detach().numpy()
    g = conv.groups
    O = W.shape[0] // g
    for j in range(g):
        Wj = W[j * O:(j + 1) * O].reshape(O, -1)
        yj = y[:, j * O:(j + 1) * O].transpose(0, 2, 3, 1).reshape(-1, O)
        want = P[j] @ Wj.T
        if conv.bias is not None:
            want = want + conv.bias.detach().numpy()[j * O:(j + 1) * O]
        np.testing.assert_allclose(want, yj, rtol=1e-10, atol=1e-10)
    conv.float()
    return P


CONVS = [
    # (Cin, Cout, kwargs, H, W)
    (4, 6, dict(kernel_size=3, padding=1), 7, 6),
    (4, 6, dict(kernel_size=(3, 5), stride=2, padding=(1, 2)), 9, 11),
    (4, 4, dict(kernel_size=(4, 2), padding="same", dilation=2), 8, 7),
    (3, 5, dict(kernel_size=(4, 3), padding="same"), 6, 6),
    (4, 6, dict(kernel_size=3, padding="valid", stride=(2, 1)), 9, 8),
    (4, 6, dict(kernel_size=3, padding=2, dilation=2, stride=2), 11, 10),
    (4, 6, dict(kernel_size=(2, 3), padding=(0, 1), dilation=(1, 3)), 7, 9),
    (6, 6, dict(kernel_size=3, padding=1, groups=2), 6, 6),
    (6, 6, dict(kernel_size=3, padding=1, groups=6), 6, 6),
    (6, 9, dict(kernel_size=(3, 1), padding=(1, 0), groups=3), 6, 5),
    (4, 6, dict(kernel_size=1), 5, 5),
    (4, 6, dict(kernel_size=1, stride=2, groups=2), 7, 6),
    (4, 6, dict(kernel_size=3, padding=1, padding_mode="reflect"), 6, 7),
    (4, 6, dict(kernel_size=(5, 3), padding=(2, 1),
                padding_mode="replicate", bias=False), 7, 6),
    (4, 6, dict(kernel_size=3, padding=(1, 2), padding_mode="circular",
                stride=2), 7, 8),
    (4, 4, dict(kernel_size=(4, 2), padding="same", dilation=(1, 2),
                padding_mode="reflect"), 8, 7),
    (4, 4, dict(kernel_size=3, padding="same", padding_mode="circular",
                groups=2), 6, 6),
    (4, 6, dict(kernel_size=3, padding=2, dilation=2,
                padding_mode="replicate", groups=2), 8, 8),
]


def conv_id(c):
    cin, cout, kw, h, w = c
    return "-".join(f"{k}={v}" for k, v in kw.items()).replace(" ", "")


@pytest.mark.parametrize("case", CONVS, ids=[conv_id(c) for c in CONVS])
def test_conv_gram_is_the_gram_of_the_patches_the_conv_reads(case):
    cin, cout, kwargs, H, W = case
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, **kwargs)
    batches = [torch.randn(2, cin, H, W), torch.randn(3, cin, H, W)]
    cal = calibrate(conv, batches)
    assert cal.layers == ["conv"]  # a bare conv: the engine's name
    G = cal.gram("conv")
    g = conv.groups
    kh, kw = conv.kernel_size
    n = cin // g * kh * kw
    assert G.shape == (g, n, n) and G.dtype == torch.float64
    want = np.zeros((g, n, n))
    rows = 0
    for x in batches:
        P = check_patches_match_conv(x, conv)
        want += np.einsum("grn,grm->gnm", P, P)
        rows += P.shape[1]
    np.testing.assert_allclose(G.numpy(), want, rtol=1e-12,
                               atol=1e-12 * np.abs(want).max())
    assert np.array_equal(G.numpy(), G.numpy().transpose(0, 2, 1))
    assert cal.count("conv") == rows
    assert cal.layer_type("conv") == "Conv2d"


def test_conv_gram_of_an_unbatched_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    x = torch.randn(3, 6, 5)
    cal = calibrate(conv, [x])
    P = check_patches_match_conv(x.unsqueeze(0), conv)
    np.testing.assert_allclose(cal.gram("conv").numpy(),
                               np.einsum("grn,grm->gnm", P, P), rtol=1e-12)
    assert cal.count("conv") == 3 * 3


def test_linear_gram_flattens_every_leading_dim():
    torch.manual_seed(0)
    fc = nn.Linear(6, 3)
    xs = [torch.randn(2, 5, 6), torch.randn(4, 7, 6), torch.randn(6)]
    cal = calibrate(fc, xs)
    assert cal.layers == ["linear"]
    rows = np.concatenate([x.double().numpy().reshape(-1, 6) for x in xs])
    np.testing.assert_allclose(cal.gram("linear").numpy(), rows.T @ rows,
                               rtol=1e-12)
    assert cal.count("linear") == 2 * 5 + 4 * 7 + 1
    assert cal.layer_type("linear") == "Linear"


def test_float32_grams_and_max_batches():
    torch.manual_seed(0)
    fc = nn.Linear(5, 2)
    xs = [torch.randn(3, 5) for _ in range(6)]
    cal = calibrate(fc, iter(xs), max_batches=2, dtype=torch.float32)
    rows = torch.cat(xs[:2]).double()
    assert cal.gram("linear").dtype == torch.float32
    np.testing.assert_allclose(cal.gram("linear").numpy(),
                               (rows.T @ rows).numpy(), rtol=1e-5)
    assert cal.count("linear") == 6
    with pytest.raises(ValueError, match="dtype"):
        calibrate(fc, xs, dtype=torch.float16)


# --- which layers share a Gram ------------------------------------------------


class Block(nn.Module):
    """Attention-style: q/k/v read one tensor; o reads another; gate/up
    read the normalized output; down reads their product; conv branches:
    a and b (same geometry) read one map, c (other geometry) too."""

    def __init__(self, d=8):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d // 2)
        self.o = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.gate = nn.Linear(d, 2 * d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 5, 1)
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, img):
        h = self.o(self.q(x) * self.k(x)) + x
        h = self.norm(h)
        y = self.down(torch.relu(self.gate(h)) * self.up(h))
        return y, self.v(x), self.a(img) + self.c(img), self.b(img)


def block_batches(n=3):
    torch.manual_seed(1)
    return [(torch.randn(2, 5, 8), torch.randn(2, 3, 6, 6)) for _ in range(n)]


def test_layers_reading_one_tensor_share_one_gram():
    torch.manual_seed(0)
    m = Block()
    batches = block_batches()
    cal = calibrate(m, batches)
    assert cal.layers == ["q", "k", "v", "o", "gate", "up", "down", "a",
                          "b", "c"]
    keys = {n: cal.key(n) for n in cal.layers}
    assert keys == {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate",
                    "up": "gate", "down": "down", "a": "a", "b": "a",
                    "c": "c"}
    assert cal.gram("k") is cal.gram("q")
    assert not torch.equal(cal.gram("o"), cal.gram("q"))
    # Stored once per key in the file.
    names = [n for n, _ in cal.tensors()]
    assert sorted(names) == sorted(f"{k}.{s}" for k in {"q", "o", "gate",
                                                         "down", "a", "c"}
                                   for s in ("gram", "count"))
    X = torch.cat([x for x, _ in batches]).reshape(-1, 8).double()
    assert torch.allclose(cal.gram("v"), X.T @ X, rtol=1e-12)
    assert cal.count("q") == cal.count("o") == cal.count("down") == 30
    assert cal.count("c") == cal.count("a") == 6 * 36
    meta = json.loads(cal.metadata()["layers"])
    assert meta["k"] == {"gram": "q", "type": "Linear", "shape": [8, 8]}
    assert meta["c"] == {"gram": "c", "type": "Conv2d", "shape": [1, 27, 27]}


def test_different_inputs_do_not_share_even_when_equal_in_value():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Linear(4, 4)
            self.r = nn.Linear(4, 4)

        def forward(self, x):
            return self.p(x) + self.r(x.clone())  # equal values, new tensor

    cal = calibrate(Two(), [torch.randn(3, 4)])
    assert cal.key("p") == "p" and cal.key("r") == "r"
    assert torch.equal(cal.gram("p"), cal.gram("r"))


def test_sharing_is_decided_over_every_batch():
    class Sometimes(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Linear(4, 4)
            self.r = nn.Linear(4, 4)

        def forward(self, x, same):
            return self.p(x) + self.r(x if same else x + 1)

    torch.manual_seed(0)
    xs = [torch.randn(3, 4), torch.randn(2, 4)]
    cal = calibrate(Sometimes(), [(xs[0], True), (xs[1], False)])
    assert cal.key("r") == "r"
    X = torch.cat(xs).double()
    Y = torch.cat([xs[0], xs[1] + 1]).double()
    assert torch.allclose(cal.gram("p"), X.T @ X, rtol=1e-12)
    assert torch.allclose(cal.gram("r"), Y.T @ Y, rtol=1e-12)
    assert cal.count("p") == cal.count("r") == 5


def test_a_layer_called_twice_counts_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.other = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x)) + self.fc(x) + self.other(x)

    torch.manual_seed(0)
    m = Twice()
    x = torch.randn(3, 4)
    cal = calibrate(m, [x])
    with torch.no_grad():
        h = m.fc(x)
    X, H = x.double(), h.double()
    assert torch.allclose(cal.gram("fc"), 2 * X.T @ X + H.T @ H, rtol=1e-12)
    assert cal.count("fc") == 9
    assert cal.key("other") == "other"  # reads x once, fc twice: not shared
    assert torch.allclose(cal.gram("other"), X.T @ X, rtol=1e-12)


def test_a_module_shared_by_two_parents_is_calibrated_once_by_its_first_name():
    fc = nn.Linear(4, 4)
    m = nn.Sequential(nn.Sequential(fc), nn.Sequential(fc))
    cal = calibrate(m, [torch.randn(2, 4)])
    assert cal.layers == ["0.0"]
    assert cal.count("0.0") == 4


def test_layers_restricts_by_name_and_glob():
    m = Block()
    cal = calibrate(m, block_batches(1), layers=["q", "g*", "[ab]"])
    assert cal.layers == ["q", "gate", "a", "b"]
    assert cal.key("b") == "a"
    with pytest.raises(ValueError, match="'nope' matches no"):
        calibrate(m, block_batches(1), layers=["q", "nope"])


def test_only_plain_conv2d_and_linear_are_hooked():
    class MyLinear(nn.Linear):
        pass

    m = nn.Sequential(nn.Conv1d(2, 2, 1), MyLinear(4, 4), nn.Linear(4, 2))
    cal = calibrate(m, [torch.randn(3, 2, 4)])
    assert cal.layers == ["2"]
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        calibrate(nn.Sequential(nn.ReLU()), [torch.randn(2)])


def test_dict_batches_and_layers_that_never_run(caplog):
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.unused = nn.Linear(3, 3)

        def forward(self, *, x):
            return self.fc(x)

    cal = calibrate(Kw(), [{"x": torch.randn(2, 3)}])
    assert cal.layers == ["fc"]
    assert "unused" in caplog.text
    with pytest.raises(ValueError, match="no batches"):
        calibrate(Kw(), [])


# --- restored state -----------------------------------------------------------


def test_modes_and_hooks_are_restored_after_a_batch_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.5)
            self.seen = []

        def forward(self, x):
            self.seen.append((self.training, self.drop.training))
            y = self.drop(self.fc(x))
            if len(self.seen) == 2:
                raise RuntimeError("bad batch")
            return y

    m = Boom()
    m.train()
    m.drop.eval()  # mixed flags must come back as they were
    pre = dict(m.fc._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="bad batch"):
        calibrate(m, [torch.randn(2, 4)] * 3)
    assert m.seen == [(False, False), (False, False)]  # ran in eval mode
    assert m.training and not m.drop.training and m.fc.training
    assert dict(m.fc._forward_pre_hooks) == pre
    assert torch.is_grad_enabled()


def test_grad_mode_and_grads_are_untouched():
    fc = nn.Linear(4, 4)
    calibrate(fc, [torch.randn(2, 4, requires_grad=True)])
    assert torch.is_grad_enabled() and fc.weight.grad is None


# --- the file -----------------------------------------------------------------


def read_independently(path):
    """(metadata, {name: numpy array}) by hand: u64 header length, JSON,
    raw little-endian data."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    kinds = {"F64": "<f8", "F32": "<f4", "I64": "<i8"}
    out = {}
    covered = 0
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        a = np.frombuffer(data[b:end], dtype=kinds[e["dtype"]])
        out[name] = a.reshape(e["shape"])
        covered += end - b
    assert covered == len(data)
    return header["__metadata__"], out, raw


def test_save_load_round_trip_is_bit_exact(tmp_path):
    m = Block()
    cal = calibrate(m, block_batches())
    path = tmp_path / "sub" / "cal.safetensors"
    digest = cal.save(path)
    raw = path.read_bytes()
    assert digest == cal.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert (8 + struct.unpack("<Q", raw[:8])[0]) % 8 == 0
    assert not [p for p in os.listdir(path.parent) if p != "cal.safetensors"]

    back = Calibration.load(path)
    assert back.digest == digest
    assert back.layers == cal.layers
    for n in cal.layers:
        assert back.key(n) == cal.key(n)
        assert back.layer_type(n) == cal.layer_type(n)
        assert back.count(n) == cal.count(n)
        a, b = cal.gram(n), back.gram(n)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.numpy().tobytes() == b.numpy().tobytes()
    # Saving what was loaded gives the same bytes.
    again = tmp_path / "again.safetensors"
    assert back.save(again) == digest
    assert again.read_bytes() == raw

    meta, arrays, _ = read_independently(path)
    assert meta["format"] == "decompd.calibration" and meta["version"] == "1"
    layers = json.loads(meta["layers"])
    assert list(layers) == cal.layers
    for n, e in layers.items():
        assert e["gram"] == cal.key(n)
        assert e["type"] == cal.layer_type(n)
        g = arrays[e["gram"] + ".gram"]
        assert list(g.shape) == e["shape"]
        assert g.tobytes() == cal.gram(n).numpy().tobytes()
        c = arrays[e["gram"] + ".count"]
        assert c.shape == () and int(c) == cal.count(n)


def test_the_engine_reads_the_file(tmp_path):
    from decomp_ctypes import Lib
    cal = calibrate(Block(), block_batches(1), dtype=torch.float32)
    path = tmp_path / "cal.safetensors"
    cal.save(path)
    lib = Lib()
    ws = lib.open(str(path))
    arrays = dict(ws.items())
    assert set(arrays) == {n for n, _ in cal.tensors()}
    for n, t in cal.tensors():
        assert np.array_equal(arrays[n], t.numpy())
    assert ws.metadata() == dict(cal.metadata())


def test_a_saved_file_is_replaced_whole(tmp_path):
    path = tmp_path / "cal.safetensors"
    path.write_bytes(b"old")
    cal = calibrate(nn.Linear(3, 3), [torch.randn(2, 3)])
    cal.save(path)
    assert Calibration.load(path).digest == cal.digest
    assert os.listdir(tmp_path) == ["cal.safetensors"]


# --- bad files ------------------------------------------------------------------


def write_file(path, tensors, layers, meta=None, pad=True, header_extra=None):
    """A safetensors file from numpy arrays {name: array} and layer
    metadata, written by hand."""
    header = {"__metadata__": dict({"format": "decompd.calibration",
                                    "version": "1",
                                    "layers": json.dumps(layers)},
                                   **(meta or {}))}
    data = b""
    names = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32",
             np.dtype("<i8"): "I64", np.dtype("<i4"): "I32"}
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    for k, v in (header_extra or {}).items():
        header[k] = v
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def good():
    G = np.array([[2.0, 1.0], [1.0, 3.0]])
    C = np.stack([np.eye(3), 2 * np.eye(3)])
    tensors = {"fc.gram": G, "fc.count": np.array(5, dtype="<i8"),
               "conv.gram": C, "conv.count": np.array(7, dtype="<i8")}
    layers = {"fc": {"gram": "fc", "type": "Linear", "shape": [2, 2]},
              "fc2": {"gram": "fc", "type": "Linear", "shape": [2, 2]},
              "conv": {"gram": "conv", "type": "Conv2d", "shape": [2, 3, 3]}}
    return tensors, layers


def test_a_hand_written_file_loads(tmp_path):
    t, l = good()
    cal = Calibration.load(write_file(tmp_path / "c", t, l))
    assert cal.layers == ["fc", "fc2", "conv"]
    assert cal.key("fc2") == "fc" and cal.count("conv") == 7
    assert np.array_equal(cal.gram("conv").numpy(), t["conv.gram"])
    # float32 Grams are accepted; no padding is needed either.
    t["fc.gram"] = t["fc.gram"].astype("<f4")
    cal = Calibration.load(write_file(tmp_path / "d", t, l, pad=False))
    assert cal.gram("fc").dtype == torch.float32


def edit(fn):
    def make():
        t, l = good()
        fn(t, l)
        return t, l
    return make


def set_(d, k, v):
    d[k] = v


BAD_LAYER = {
    # id: (make (tensors, layers), layer named, what the message says)
    "nonfinite": (edit(lambda t, l: t["fc.gram"].__setitem__((0, 0), np.nan)),
                  "fc", "non-finite"),
    "inf": (edit(lambda t, l: t["conv.gram"].__setitem__((1, 0, 0), np.inf)),
            "conv", "non-finite"),
    "asymmetric": (edit(lambda t, l: t["fc.gram"].__setitem__((0, 1), 1.5)),
                   "fc", "not symmetric"),
    "asymmetric_group": (edit(lambda t, l: t["conv.gram"].__setitem__(
        (1, 2, 0), 0.1)), "conv", "not symmetric"),
    "negative_diagonal": (edit(lambda t, l: t["fc.gram"].__setitem__(
        (1, 1), -3.0)), "fc", "negative diagonal"),
    "not_square": (edit(lambda t, l: (set_(t, "fc.gram", np.ones((2, 3))),
                                      l["fc"].__setitem__("shape", [2, 3]),
                                      l["fc2"].__setitem__("shape", [2, 3]))),
                   "fc", "not square"),
    "conv_as_2d": (edit(lambda t, l: (set_(t, "conv.gram", np.eye(3)),
                                      l["conv"].__setitem__("shape", [3, 3]))),
                   "conv", r"\[g, n, n\]"),
    "linear_as_3d": (edit(lambda t, l: (set_(t, "fc.gram", np.ones((1, 2, 2))),
                                        l["fc"].__setitem__("shape",
                                                            [1, 2, 2]))),
                     "fc", r"\[in, in\]"),
    "empty_gram": (edit(lambda t, l: (set_(t, "fc.gram", np.ones((0, 0))),
                                      l["fc"].__setitem__("shape", [0, 0]))),
                   "fc", "empty"),
    "int_gram": (edit(lambda t, l: set_(t, "fc.gram",
                                        np.eye(2, dtype="<i8"))),
                 "fc", "not F64 or F32"),
    "metadata_shape": (edit(lambda t, l: l["conv"].__setitem__("shape",
                                                               [2, 3, 4])),
                       "conv", "shape"),
    "shared_shape": (edit(lambda t, l: l["fc2"].__setitem__("shape", [3, 3])),
                     "fc2", "shape"),
    "shared_type": (edit(lambda t, l: l["fc2"].__setitem__("type", "Conv2d")),
                    "fc2", "shares fc.gram with a Linear"),
    "unknown_type": (edit(lambda t, l: l["fc"].__setitem__("type", "Conv1d")),
                     "fc", "neither Linear nor Conv2d"),
    "no_gram_key": (edit(lambda t, l: l["fc"].pop("gram")), "fc",
                    "not a tensor key"),
    "not_an_object": (edit(lambda t, l: set_(l, "fc", "fc")), "fc",
                      "not an object"),
    "missing_gram": (edit(lambda t, l: (t.pop("fc.gram"))), "fc",
                     "no tensor fc.gram"),
    "missing_count": (edit(lambda t, l: t.pop("conv.count")), "conv",
                      "no tensor conv.count"),
    "count_zero": (edit(lambda t, l: set_(t, "fc.count",
                                          np.array(0, dtype="<i8"))),
                   "fc", "at least one"),
    "count_negative": (edit(lambda t, l: set_(t, "conv.count",
                                              np.array(-4, dtype="<i8"))),
                       "conv", "at least one"),
    "count_not_scalar": (edit(lambda t, l: set_(t, "fc.count",
                                                np.array([5], dtype="<i8"))),
                         "fc", "not an I64 scalar"),
    "count_float": (edit(lambda t, l: set_(t, "fc.count", np.array(5.0))),
                    "fc", "not an I64 scalar"),
    "count_int32": (edit(lambda t, l: set_(t, "conv.count",
                                           np.array(5, dtype="<i4"))),
                    "conv", "not an I64 scalar"),
}


@pytest.mark.parametrize("case", list(BAD_LAYER), ids=list(BAD_LAYER))
def test_bad_layer_is_named(tmp_path, case):
    make, layer, what = BAD_LAYER[case]
    t, l = make()
    path = write_file(tmp_path / "bad.safetensors", t, l)
    with pytest.raises(CalibrationError, match=what) as e:
        Calibration.load(path)
    msg = str(e.value)
    print(msg)
    assert f"layer {layer!r}" in msg and str(path) in msg
    assert isinstance(e.value, ValueError)


def rewrite_header(path, fn):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    fn(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


BAD_TENSOR = {
    # a tensor entry is damaged: the message names it and its layer
    "overlap": (lambda h: h["fc.count"].__setitem__(
        "data_offsets", [h["fc.gram"]["data_offsets"][0] + 8,
                         h["fc.gram"]["data_offsets"][0] + 16]),
                "fc", "overlap"),
    "span": (lambda h: h["conv.gram"].__setitem__("shape", [2, 3, 2]),
             "conv", "span"),
    "past_end": (lambda h: h["conv.count"].__setitem__(
        "data_offsets", [10 ** 6, 10 ** 6 + 8]), "conv", "past the data"),
    "bad_dtype": (lambda h: h["fc.gram"].__setitem__("dtype", "F128"),
                  "fc", "unknown dtype"),
    "bad_shape": (lambda h: h["fc.gram"].__setitem__("shape", [2, -2]),
                  "fc", "shape"),
    "bad_offsets": (lambda h: h["fc.gram"].__setitem__("data_offsets", [8]),
                    "fc", "data_offsets"),
    "extra_field": (lambda h: h["conv.gram"].__setitem__("crc", 1),
                    "conv", "exactly dtype"),
}


@pytest.mark.parametrize("case", list(BAD_TENSOR), ids=list(BAD_TENSOR))
def test_bad_tensor_entry_names_its_layer(tmp_path, case):
    fn, layer, what = BAD_TENSOR[case]
    path = write_file(tmp_path / "bad.safetensors", *good())
    rewrite_header(path, fn)
    with pytest.raises(CalibrationError, match=what) as e:
        Calibration.load(path)
    print(e.value)
    assert f"(layer {layer!r})" in str(e.value)


def test_whole_file_damage_is_reported(tmp_path):
    t, l = good()
    path = write_file(tmp_path / "c.safetensors", t, l)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])

    def load_bytes(data, what):
        p = tmp_path / "bad.safetensors"
        p.write_bytes(data)
        with pytest.raises(CalibrationError, match=what) as e:
            Calibration.load(p)
        assert str(p) in str(e.value)
        print(e.value)

    def with_header(h):
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + raw[8 + n:]

    load_bytes(raw[:5], "too short")
    load_bytes(raw[:8 + n - 3], "runs past the end")
    load_bytes(struct.pack("<Q", 200 * 10 ** 6) + raw[8:], "100 MB")
    load_bytes(raw[:-8], "tensors cover|past the data")
    load_bytes(raw + b"\0" * 8, "tensors cover")
    load_bytes(struct.pack("<Q", 4) + b"[1] " + raw[8 + n:], "not a JSON obj")
    load_bytes(struct.pack("<Q", 4) + b"{1: " + raw[8 + n:], "not JSON")
    dup = raw[8:8 + n].replace(b'"fc.count"', b'"fc.gram"', 1)
    load_bytes(raw[:8] + dup + raw[8 + n:], "twice")
    h = dict(header)
    del h["__metadata__"]
    load_bytes(with_header(h), "no __metadata__")
    for key, value, what in [("format", "other", "format"),
                             ("version", "2", "version"),
                             ("layers", "{", "layers is not JSON"),
                             ("layers", "{}", "non-empty"),
                             ("layers", 3, "not a string")]:
        h = json.loads(json.dumps(header))
        h["__metadata__"][key] = value
        load_bytes(with_header(h), what)
    # A tensor no layer uses.
    t2 = dict(t, **{"stray.gram": np.eye(2)})
    p = write_file(tmp_path / "stray.safetensors", t2, l)
    with pytest.raises(CalibrationError, match="'stray.gram' belongs to no"):
        Calibration.load(p)
    with pytest.raises(FileNotFoundError):
        Calibration.load(tmp_path / "missing.safetensors")


def test_public_names():
    assert decompd.calibrate is calibrate
    assert decompd.Calibration is Calibration
    assert issubclass(decompd.CalibrationError, ValueError)


# --- reporting and memory -------------------------------------------------------


def test_progress_bar_and_summary_line(monkeypatch, capsys, caplog):
    monkeypatch.setenv("DECOMPD_PROGRESS", "1")
    caplog.set_level("INFO", logger="decompd")
    calibrate(Block(), block_batches(3))
    err = capsys.readouterr().err
    assert "decompd calibrate [" in err and "3/3 batches" in err
    assert err.endswith("\n")
    assert any(r.getMessage().startswith(
        "calibrated 10 layer(s) (6 Gram(s)) on 3 batch(es) in ")
        for r in caplog.records)
    monkeypatch.setenv("DECOMPD_PROGRESS", "0")
    calibrate(Block(), iter(block_batches(2)))  # unknown length, no bar
    assert capsys.readouterr().err == ""


def test_no_activation_outlives_its_forward():
    import weakref
    m = Block()
    seen = []

    def keep_ref(module, inputs, output):
        seen.append(weakref.ref(output))

    handles = [mod.register_forward_hook(keep_ref)
               for mod in (m.q, m.norm, m.gate, m.a)]
    cal = calibrate(m, block_batches(2))
    for h in handles:
        h.remove()
    assert len(seen) == 8 and all(r() is None for r in seen)
    assert len(cal.layers) == 10


# --- the engine binding ----------------------------------------------------------


def test_engine_options_struct_matches_the_header():
    # The engine reads every field of decomp_options it declares; a ctypes
    # struct shorter than the header's hands it whatever lies past its end
    # (the calibration fields, and any field appended later).
    import re
    import ctypes
    from decompd import _engine
    from decomp_ctypes_engine import _Options as TestOptions
    src = os.environ.get("DECOMPD_SOURCE_DIR",
                         os.path.join(os.path.dirname(__file__), "..", ".."))
    text = open(os.path.join(src, "include", "decomp", "decomp.h")).read()
    body = text[text.index("typedef struct decomp_options {"):
                text.index("} decomp_options;")]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = re.findall(r"(\w+)\s*;", body.split("{", 1)[1])
    assert names[:2] == ["progress", "progress_user"]
    assert "calibration" in names and "calibration_digest" in names
    for cls in (_engine._Options, TestOptions):
        assert [f[0] for f in cls._fields_] == names, cls
    assert dict(_engine._Options._fields_)["calibration"] is ctypes.c_void_p
