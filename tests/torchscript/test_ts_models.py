"""TorchScript intake on real models: what decompd-ts-reader and
decomp_torchscript_read give for scripted and traced archives equals what
PyTorch says about the live module — the state dict bit for bit, in order,
and the layer spec field for field."""

import json
import os
import subprocess

import pytest
import torch
import torch.nn as nn
import torchvision

import tsutil

torch.manual_seed(0)


def resnet18():
    m = torchvision.models.resnet18(weights=None)
    # Non-trivial buffers, so that running stats are really compared.
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.num_batches_tracked.fill_(7)
    return m.eval()


class OddConvs(nn.Module):
    """Every Conv2d field away from its default."""

    def __init__(self):
        super().__init__()
        self.strided = nn.Conv2d(8, 16, (3, 5), stride=2, padding=(1, 2))
        self.dilated = nn.Conv2d(16, 16, (5, 3), dilation=2, padding=(4, 2),
                                 bias=False)
        self.grouped = nn.Conv2d(16, 32, (3, 3), groups=4, padding=1)
        self.reflect = nn.Conv2d(32, 32, (3, 5), stride=(2, 1), padding=(1, 2),
                                 dilation=(1, 2), groups=4,
                                 padding_mode="reflect")
        self.replicate = nn.Conv2d(32, 16, (1, 3), padding=(0, 1),
                                   padding_mode="replicate")
        self.circular = nn.Conv2d(16, 16, (3, 3), padding=1,
                                  padding_mode="circular", bias=False)
        self.same = nn.Conv2d(16, 16, (3, 4), padding="same", dilation=(2, 1))
        self.valid = nn.Conv2d(16, 8, (2, 2), padding="valid")
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.grouped(self.dilated(self.strided(x)))
        x = self.circular(self.replicate(self.reflect(x)))
        x = self.valid(self.same(x))
        return self.fc(x.mean((2, 3)))


class MyConv(nn.Conv2d):
    """A Conv2d subclass: not decomposable, listed by its qualified name."""


class Mixed(nn.Module):
    """Shared modules, non-conv layers, a subclass, odd dtypes, buffers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.again = self.conv                 # the same module, second name
        self.sub = MyConv(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.unused_half = nn.Linear(2, 2).half()  # never called
        self.root_param = nn.Parameter(torch.randn(3).bfloat16())
        self.register_buffer("steps", torch.arange(5, dtype=torch.int32))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("scale", torch.randn(2, 3, dtype=torch.float64))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))

    def forward(self, x):
        x = self.bn(self.sub(self.conv(x)))
        return self.head(x.mean((2, 3), keepdim=True))


def save(model, how, path, example):
    m = torch.jit.script(model) if how == "script" else torch.jit.trace(
        model, example)
    m.save(str(path))
    return path


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    d = tmp_path_factory.mktemp("archives")
    models = {
        "resnet18": (resnet18(), torch.randn(1, 3, 64, 64)),
        "odd": (OddConvs().eval(), torch.randn(1, 8, 40, 40)),
        "mixed": (Mixed().eval(), torch.randn(1, 3, 8, 8)),
        "bare": (nn.Conv2d(4, 6, (3, 2), stride=(1, 2)).eval(),
                 torch.randn(1, 4, 7, 7)),
    }
    out = {}
    for name, (model, example) in models.items():
        for how in ("script", "trace"):
            with torch.no_grad():
                out[name, how] = (model,
                                  save(model, how, d / f"{name}-{how}.pt",
                                       example))
    return out


CASES = [(n, h) for n in ("resnet18", "odd", "mixed", "bare")
         for h in ("script", "trace")]


@pytest.mark.parametrize("name,how", CASES)
def test_reader_output_equals_live_module(archives, tmp_path, name, how):
    model, archive = archives[name, how]
    p = tsutil.run_reader(archive, tmp_path / "out")
    assert p.returncode == 0, p.stderr
    got = tsutil.read_safetensors(tmp_path / "out" / "weights.safetensors")
    tsutil.assert_same_tensors(got, tsutil.state_dict(model))
    with open(tmp_path / "out" / "spec.json") as f:
        spec = json.load(f)
    assert spec == tsutil.spec_from_module(model)
    pkg = tsutil.package_spec(model)
    if pkg is not None:
        assert spec == pkg


@pytest.mark.parametrize("name,how", CASES)
def test_c_api_result_equals_live_module(archives, tmp_path, name, how):
    model, archive = archives[name, how]
    r = tsutil.run_dump(archive, tmp_path / "out",
                        env={"TMPDIR": str(tmp_path)})
    assert r["ok"], r
    assert r["format"] == "torchscript"
    got = tsutil.read_safetensors(tmp_path / "out" / "weights.safetensors")
    tsutil.assert_same_tensors(got, tsutil.state_dict(model))
    with open(tmp_path / "out" / "spec.json") as f:
        spec = json.load(f)
    assert spec == tsutil.canonical_spec(tsutil.spec_from_module(model),
                                         tmp_path)
    # The private work folder is gone.
    assert not [p for p in os.listdir(tmp_path) if p.startswith("decompd-ts-")]


def test_traced_same_padding_with_mode_reads_as_numbers(tmp_path):
    """A traced archive keeps no trace of padding='same' when the padding
    mode is not zeros and the padding is even: the reader gives the equal
    explicit padding and says so on stderr."""
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding="same",
                                    padding_mode="circular")).eval()
    archive = save(model, "trace", tmp_path / "same.pt",
                   torch.randn(1, 4, 9, 9))
    p = tsutil.run_reader(archive, tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "padding='same'" in p.stderr
    with open(tmp_path / "out" / "spec.json") as f:
        (layer,) = json.load(f)["layers"]
    assert layer["padding"] == [1, 1]
    assert layer["padding_mode"] == "circular"
    # Uneven 'same' (an even kernel) is recognised from the uneven pad.
    model = nn.Sequential(nn.Conv2d(4, 4, (2, 4), padding="same",
                                    padding_mode="reflect")).eval()
    archive = save(model, "trace", tmp_path / "same2.pt",
                   torch.randn(1, 4, 9, 9))
    p = tsutil.run_reader(archive, tmp_path / "out2")
    assert p.returncode == 0, p.stderr
    with open(tmp_path / "out2" / "spec.json") as f:
        spec = json.load(f)
    assert spec == tsutil.spec_from_module(model)


def test_traced_conv_never_called_is_left_alone(tmp_path):
    """A traced module whose forward never ran has no graph to read its
    fields from: it is listed with a type the engine does not decompose."""

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 4, 3)
            self.unused = nn.Conv2d(3, 4, 3, stride=2)

        def forward(self, x):
            return self.used(x)

    model = Unused().eval()
    archive = save(model, "trace", tmp_path / "unused.pt",
                   torch.randn(1, 3, 8, 8))
    p = tsutil.run_reader(archive, tmp_path / "out")
    assert p.returncode == 0, p.stderr
    with open(tmp_path / "out" / "spec.json") as f:
        layers = {l["name"]: l for l in json.load(f)["layers"]}
    assert layers["used"] == tsutil.spec_from_module(model)["layers"][0]
    assert layers["unused"] == {"name": "unused",
                                "type": "Conv2d(structure not recorded)"}
    assert "unused" in p.stderr
    got = tsutil.read_safetensors(tmp_path / "out" / "weights.safetensors")
    tsutil.assert_same_tensors(got, tsutil.state_dict(model))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_resnet18_decomposes_as_its_state_dict_with_the_python_spec(
        archives, tmp_path, how):
    """The issue's acceptance at the engine level: decomposing what the
    intake read from the archive gives, bit for bit, what decomposing the
    state dict with the spec made in Python gives (decompctl decompose, the
    engine the daemon's workers call)."""
    if not os.path.exists(tsutil.DECOMPCTL):
        pytest.skip("decompctl is not built")
    model, archive = archives["resnet18", how]
    policy = "budget"
    r = tsutil.run_dump(archive, tmp_path / "ts", decompose=policy)
    assert r["ok"], r

    sd = tmp_path / "sd.pth"
    torch.save(model.state_dict(), str(sd))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tsutil.spec_from_module(model)))
    p = subprocess.run([tsutil.DECOMPCTL, "decompose", "--weights", str(sd),
                        "--spec", str(spec), "--out", str(tmp_path / "sd"),
                        "--policy", policy, "--format", "safetensors",
                        "--quiet"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    want_file = [f for f in os.listdir(tmp_path / "sd")
                 if f.endswith(".safetensors")]
    assert len(want_file) == 1, os.listdir(tmp_path / "sd")

    got = tsutil.read_safetensors(tmp_path / "ts" / "decomposed.safetensors")
    want = tsutil.read_safetensors(tmp_path / "sd" / want_file[0])
    tsutil.assert_same_tensors(got, want)
    assert any(k.endswith(".0.weight") for k in got), "nothing decomposed"

    def info(path):
        with open(path) as f:
            d = json.load(f)
        d.pop("source", None)  # the input's digest and format differ
        # decompctl's streamed safetensors output records its peak RSS
        d.get("summary", {}).pop("peak_rss_bytes", None)
        return d

    assert info(tmp_path / "ts" / "decompose_info.json") == info(
        tmp_path / "sd" / "decompose_info.json")
