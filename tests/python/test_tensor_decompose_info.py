"""decompose_network: it reads decompd's info files and the reference tool's
(fixtures made with its real code), rebuilds structure only, and on a wrong,
mismatched or missing info file raises a clear exception naming the layer
while leaving the model exactly as it was."""

import copy
import json
import os

import pytest
import torch
import torch.nn as nn

from decompd.tensor_decompose import auto_decomposition, decompose_network
from tensor_decompose_common import FIXTURES, ModesNet, Net, rel_err


def resnet18():
    import torchvision
    return torchvision.models.resnet18(weights=None)


def fingerprint(model):
    """Everything that must not change when decompose_network refuses."""
    return ([(n, type(m), id(m)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_unchanged(model, fp):
    mods, sd = fingerprint(model)
    assert mods == fp[0]
    assert sd.keys() == fp[1].keys()
    assert all(torch.equal(sd[k], fp[1][k]) for k in sd)


@pytest.fixture(scope="module")
def net_info(tmp_path_factory):
    """An info file of ours for Net, every 3x3+ conv decomposed at rank 2
    (spatial pairs: the policy's methods are pinned, so the 1x1 proj is left
    alone)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("info") / "decompose_info.json"
    _, changes = auto_decomposition(Net(), decompose_info_path=str(path),
                                    policy={"name": "fixed", "rank": 2,
                                            "methods": ["spatial"]})
    assert list(changes) == ["conv1", "conv2", "conv3", "conv4"]
    return path


def rewrite(src, dst, edit):
    info = json.loads(src.read_text())
    edit(info)
    dst.write_text(json.dumps(info))
    return dst


# --- reading good files ----------------------------------------------------


def test_structure_only_with_default_init(net_info):
    torch.manual_seed(0)
    net = Net()
    net, changes = decompose_network(net, str(net_info))
    info = json.loads(net_info.read_text())
    assert changes == info["changes"]
    for layer in info["layers"]:
        seq = dict(net.named_modules())[layer["name"]]
        for conv, spec in zip(seq, layer["modules"]):
            assert type(conv) is nn.Conv2d
            assert list(conv.weight.shape[:2]) == [
                spec["out_channels"], spec["in_channels"] // spec["groups"]]
            assert list(conv.kernel_size) == spec["kernel_size"]
            assert list(conv.stride) == spec["stride"]
            assert (conv.bias is not None) == spec["bias"]
    # default init: not zeros, not the engine's weights
    assert net.conv1[0].weight.abs().sum() > 0


def test_keeps_dtype_requires_grad_and_mode(net_info):
    net = Net().double()
    net.conv1.weight.requires_grad_(False)
    net.eval()
    net, _ = decompose_network(net, net_info)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert not net.conv1[0].weight.requires_grad
    assert not net.conv1[1].weight.requires_grad
    assert net.conv1[1].bias.requires_grad
    assert not any(m.training for m in net.modules())


def test_structure_on_the_meta_device(net_info):
    # Structure only: a model without data (meta device) can be rebuilt.
    net, changes = decompose_network(Net().to("meta"), net_info)
    assert changes and all(p.device.type == "meta" for p in net.parameters())


def test_bare_conv_is_left_untouched(tmp_path):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 64, 3, padding=1)
    path = tmp_path / "info.json"
    new1, changes1 = auto_decomposition(copy.deepcopy(conv), path)
    new2, changes2 = decompose_network(conv, path)
    assert type(conv) is nn.Conv2d and isinstance(new2, nn.Sequential)
    assert changes1 == changes2 == {"": ["0", "1"]}
    new2.load_state_dict(new1.state_dict(), strict=True)


def test_shared_conv_under_another_name(tmp_path):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(16, 16, 3, padding=1)
            self.a = conv
            self.b = conv

    torch.manual_seed(0)
    path = tmp_path / "info.json"
    src, changes = auto_decomposition(Shared(), path,
                                      policy={"name": "fixed", "rank": 4})
    assert changes == {"a": ["a.0", "a.1"]}
    info = json.loads(path.read_text())
    for layer in info["layers"]:
        layer["name"] = "b"
        for i, m in enumerate(layer["modules"]):
            m["name"] = f"b.{i}"
    info["changes"] = {"b": ["b.0", "b.1"]}
    path.write_text(json.dumps(info))
    net, changes = decompose_network(Shared(), path)
    assert changes == {"b": ["b.0", "b.1"]}
    assert net.a is net.b and isinstance(net.a, nn.Sequential)


def test_reference_tool_info_on_resnet18():
    path = os.path.join(FIXTURES, "amct_resnet18_decompose_info.json")
    ref = json.load(open(path))
    net = resnet18()
    net, changes = decompose_network(net, path)
    names = [e["ori_layer_info"]["name"] for e in ref]
    assert list(changes) == names and len(names) == 17
    modules = dict(net.named_modules())
    for entry in ref:
        name = entry["ori_layer_info"]["name"]
        seq = modules[name]
        assert changes[name] == [f"{name}.0", f"{name}.1"]
        assert list(seq[0].weight.shape) == entry["decom_nodes"]["first"]["weight_shape"]
        assert list(seq[1].weight.shape) == entry["decom_nodes"]["last"]["weight_shape"]
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_reference_tool_modes_fixture():
    # All four of the reference's modes, then its own decomposed weights.
    info = os.path.join(FIXTURES, "amct_modes_decompose_info.json")
    weights = torch.load(os.path.join(FIXTURES, "amct_modes_weights.pth"))
    decomposed = torch.load(os.path.join(FIXTURES,
                                         "amct_modes_decomposed_weights.pth"))
    orig = ModesNet().eval()
    orig.load_state_dict(weights, strict=True)
    net = ModesNet()
    net, changes = decompose_network(net, info)
    assert changes == {n: [f"{n}.0", f"{n}.1"] for n in "abcd"}
    net.load_state_dict(decomposed, strict=True)
    net.eval()
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        y, y0 = net(x), orig(x)
    assert y.shape == y0.shape and torch.isfinite(y).all()
    # The reference keeps a low rank of random weights: close, not equal.
    print(f"reference's decomposition vs original: relative error "
          f"{rel_err(y, y0):.3f}")
    assert rel_err(y, y0) < 1.0


# --- refusing bad files ----------------------------------------------------


def test_missing_file(tmp_path):
    net = Net()
    fp = fingerprint(net)
    with pytest.raises(FileNotFoundError) as e:
        decompose_network(net, tmp_path / "nope.json")
    assert "nope.json" in str(e.value)
    assert_unchanged(net, fp)


@pytest.mark.parametrize("text", ["", "not json", "[1, 2", "{}", "42",
                                  '{"format": "something else"}'])
def test_not_an_info_file(tmp_path, text):
    path = tmp_path / "info.json"
    path.write_text(text)
    net = Net()
    fp = fingerprint(net)
    with pytest.raises(ValueError) as e:
        decompose_network(net, path)
    assert str(path) in str(e.value)
    assert_unchanged(net, fp)


def test_layer_missing_from_the_model(net_info, tmp_path):
    def edit(info):  # a consistent file, for a layer the model lacks
        layer = info["layers"][-1]
        del info["changes"][layer["name"]]
        layer["name"] = "conv9"
        for i, m in enumerate(layer["modules"]):
            m["name"] = f"conv9.{i}"
        info["changes"]["conv9"] = ["conv9.0", "conv9.1"]
    path = rewrite(net_info, tmp_path / "i.json", edit)
    net = Net()
    fp = fingerprint(net)
    with pytest.raises(ValueError, match="conv9: no layer"):
        decompose_network(net, path)
    assert_unchanged(net, fp)


def test_layer_is_not_a_conv(net_info):
    class Other(Net):
        def __init__(self):
            super().__init__()
            self.conv3 = nn.Linear(64, 64)

    net = Other()
    fp = fingerprint(net)
    with pytest.raises(ValueError, match="conv3: .*Linear, not a Conv2d"):
        decompose_network(net, net_info)
    assert_unchanged(net, fp)


@pytest.mark.parametrize("attr,value,field", [
    ("conv3", nn.Conv2d(64, 64, (3, 5), stride=1, padding=(1, 2)), "stride"),
    ("conv3", nn.Conv2d(64, 64, (3, 5), stride=2, padding=(1, 1)), "padding"),
    ("conv3", nn.Conv2d(64, 64, (3, 3), stride=2, padding=(1, 2)), "kernel_size"),
    ("conv2", nn.Conv2d(32, 64, 5, padding=2, bias=True), "bias"),
    ("conv1", nn.Conv2d(3, 48, 3, padding=1), "out_channels"),
])
def test_layer_spec_mismatch(net_info, attr, value, field):
    net = Net()
    setattr(net, attr, value)
    fp = fingerprint(net)
    with pytest.raises(ValueError, match=f"{attr}: {field}") as e:
        decompose_network(net, net_info)
    print(e.value)
    assert_unchanged(net, fp)


def test_reference_file_on_the_wrong_model():
    net = Net()
    fp = fingerprint(net)
    with pytest.raises(ValueError, match="conv1: "):
        decompose_network(net, os.path.join(
            FIXTURES, "amct_resnet18_decompose_info.json"))
    assert_unchanged(net, fp)


def test_inconsistent_new_modules(net_info, tmp_path):
    def edit(info):
        info["layers"][0]["modules"][1]["in_channels"] += 1
    path = rewrite(net_info, tmp_path / "i.json", edit)
    net = Net()
    fp = fingerprint(net)
    with pytest.raises(ValueError, match="conv1"):
        decompose_network(net, path)
    assert_unchanged(net, fp)


def test_already_decomposed(net_info):
    net, _ = decompose_network(Net(), net_info)
    fp = fingerprint(net)
    with pytest.raises(ValueError, match="already decomposed"):
        decompose_network(net, net_info)
    assert_unchanged(net, fp)


def test_last_layer_wrong_changes_nothing(net_info):
    # Validation covers every layer before the first one is replaced.
    net = Net()
    net.conv4 = nn.Conv2d(64, 128, 3, padding=1, groups=4)
    fp = fingerprint(net)
    with pytest.raises(ValueError, match="conv4: groups"):
        decompose_network(net, net_info)
    assert_unchanged(net, fp)
