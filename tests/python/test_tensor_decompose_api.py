"""auto_decomposition's semantics on the real engine: exactness at full rank,
the default policy's MAC target, the bare-Conv2d case, shared convs, what the
new parameters keep, policies, errors, logging and the progress bar."""

import copy
import json
import logging
import os

import pytest
import torch
import torch.nn as nn

import decompd
import decompd._progress
from decompd.tensor_decompose import auto_decomposition, decompose_network
from tensor_decompose_common import ModesNet, Net, conv_macs, rel_err, run_python

FULL_RANK = {"name": "ratio", "ratio": 1.0}


def resnet18():
    import torchvision
    return torchvision.models.resnet18(weights=None)


class Odd(nn.Module):
    """Every conv feature the decomposition must carry over exactly."""

    def __init__(self):
        super().__init__()
        self.reflect = nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect")
        self.replicate = nn.Conv2d(16, 16, (5, 3), padding=(2, 1),
                                   padding_mode="replicate", bias=False)
        self.circular = nn.Conv2d(16, 24, 3, padding=1,
                                  padding_mode="circular")
        self.same = nn.Conv2d(24, 24, (4, 2), padding="same", dilation=2)
        self.valid = nn.Conv2d(24, 32, 3, padding="valid", stride=(2, 1))
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.dilated = nn.Conv2d(32, 16, 3, padding=2, dilation=2, stride=2)

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


def decomposed_names(model):
    return {n for n, m in model.named_modules()
            if isinstance(m, nn.Sequential) and len(m) == 2
            and all(type(c) is nn.Conv2d for c in m)}


# --- exactness and cost --------------------------------------------------


@pytest.mark.parametrize("make,size", [(Net, 32), (ModesNet, 24), (Odd, 20),
                                       (resnet18, 64)],
                         ids=["Net", "ModesNet", "Odd", "resnet18"])
def test_full_rank_policy_reproduces_outputs(make, size):
    torch.manual_seed(0)
    net = make().eval()
    in_ch = next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(2, in_ch, size, size)
    with torch.no_grad():
        ref = net(x)
    net, changes = auto_decomposition(net, policy=FULL_RANK)
    assert changes
    with torch.no_grad():
        out = net(x)
    err = rel_err(out, ref)
    print(f"{make.__name__}: {len(changes)} convs at full rank, "
          f"relative error {err:.2e}")
    assert err <= 1e-4


def test_full_rank_covers_every_conv_feature():
    torch.manual_seed(0)
    net = Odd()
    _, changes = auto_decomposition(net, policy=FULL_RANK)
    assert set(changes) == {n for n, _ in Odd().named_children()}


def test_default_policy_meets_its_mac_target():
    # The default policy (budget, 2x) over the eligible convs (kh, kw > 1),
    # MACs counted with forward hooks on a real input.
    torch.manual_seed(0)
    net = resnet18()
    x = torch.randn(1, 3, 224, 224)
    eligible = {m: n for n, m in net.named_modules()
                if isinstance(m, nn.Conv2d) and min(m.kernel_size) > 1}
    before = conv_macs(net, x)
    total_before = sum(before.values())
    elig_before = sum(v for m, v in before.items() if m in eligible)
    net, changes = auto_decomposition(net)
    after = conv_macs(net, x)
    total_after = sum(after.values())
    elig_after = total_after - sum(v for m, v in before.items()
                                   if m not in eligible)
    ratio = elig_before / elig_after
    print(f"resnet18 @224: eligible conv MACs {elig_before / 1e6:.1f}M -> "
          f"{elig_after / 1e6:.1f}M ({ratio:.3f}x); all convs "
          f"{total_before / 1e6:.1f}M -> {total_after / 1e6:.1f}M "
          f"({total_before / total_after:.3f}x); {len(changes)} of "
          f"{len(eligible)} eligible convs decomposed")
    assert ratio >= 2.0 * 0.98


# --- the reference's semantics -------------------------------------------


def test_bare_conv_is_left_untouched():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 64, 3, padding=1)
    saved = copy.deepcopy(conv.state_dict())
    new, changes = auto_decomposition(conv, policy=FULL_RANK)
    assert type(conv) is nn.Conv2d
    assert all(torch.equal(v, conv.state_dict()[k]) for k, v in saved.items())
    assert new is not conv and isinstance(new, nn.Sequential)
    assert changes == {"": ["0", "1"]}
    assert set(new.state_dict()) == {"0.weight", "1.weight", "1.bias"}
    x = torch.randn(1, 32, 12, 12)
    with torch.no_grad():
        assert rel_err(new(x), conv(x)) <= 1e-4


def test_bare_conv_not_decomposed_is_returned_as_is():
    conv = nn.Conv2d(32, 64, 1)
    new, changes = auto_decomposition(conv)
    assert new is conv and changes == {}


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(16, 16, 3, padding=1)
        self.a = conv
        self.block = nn.Sequential(nn.ReLU(), conv)

    def forward(self, x):
        return self.block(self.a(x))


def test_conv_shared_by_two_names_is_decomposed_once():
    torch.manual_seed(0)
    net = Shared()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        ref = net(x)
    net, changes = auto_decomposition(net, policy=FULL_RANK)
    assert changes == {"a": ["a.0", "a.1"]}  # the first name only
    assert net.a is net.block[1]
    assert isinstance(net.a, nn.Sequential)
    assert len(list(net.parameters())) == 3  # shared, counted once
    with torch.no_grad():
        assert rel_err(net(x), ref) <= 1e-4


def test_new_parameters_keep_dtype_requires_grad_and_mode():
    torch.manual_seed(0)
    net = Net().double()
    net.conv2.weight.requires_grad_(False)
    net.conv3.bias.requires_grad_(False)
    net.train()
    net.conv3.eval()
    net, changes = auto_decomposition(net, policy=FULL_RANK)
    assert {"conv2", "conv3"} <= set(changes)
    for p in net.parameters():
        assert p.dtype == torch.float64 and p.device.type == "cpu"
    assert not net.conv2[0].weight.requires_grad
    assert not net.conv2[1].weight.requires_grad
    assert net.conv3[0].weight.requires_grad
    assert not net.conv3[1].bias.requires_grad
    assert net.conv1.training and net.conv1[0].training
    assert not net.conv3.training
    assert not net.conv3[0].training and not net.conv3[1].training


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_keep_their_dtype(dtype):
    torch.manual_seed(0)
    net = Net()
    ref = copy.deepcopy(net).eval()
    net = net.to(dtype)
    net, changes = auto_decomposition(net, policy=FULL_RANK)
    assert changes
    for p in net.parameters():
        assert p.dtype == dtype
    # Back in float32, the half-precision pair still matches the original
    # to half precision.
    net = net.float().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(net(x), ref(x)) < 5e-2


def test_only_plain_conv2d_is_decomposed(tmp_path):
    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(nn.Conv2d(16, 32, 3), MyConv(32, 32, 3),
                        nn.utils.weight_norm(nn.Conv2d(32, 32, 3)),
                        nn.Flatten(), nn.Linear(32, 4))
    path = tmp_path / "info.json"
    net, changes = auto_decomposition(net, str(path), policy=FULL_RANK)
    assert set(changes) == {"0"}
    assert type(net[1]) is MyConv and type(net[2]) is nn.Conv2d
    skipped = {s["name"]: s["reason"]
               for s in json.loads(path.read_text())["skipped"]}
    assert "not a Conv2d" in skipped["4"]
    assert "1" in skipped and "2" in skipped


def test_info_file_records_every_layer(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "sub" / "dir" / "info.json"
    net, changes = auto_decomposition(Net(), decompose_info_path=path)
    info = json.loads(path.read_text())
    assert info["format"] == "decompd.decompose_info" and info["version"] == 1
    assert info["changes"] == changes
    names = [layer["name"] for layer in info["layers"]]
    assert names == list(changes)
    for layer in info["layers"]:
        assert layer["order"] in ("vertical_first", "horizontal_first")
        assert len(layer["modules"]) == 2
        assert layer["original"]["type"] == "Conv2d"
    assert info["policy"]["name"] == "budget"


# --- policies, the service, errors ---------------------------------------


def test_policy_by_name_dict_or_json_text():
    torch.manual_seed(0)
    _, c1 = auto_decomposition(Net(), policy="vbmf")
    _, c2 = auto_decomposition(Net(), policy={"name": "fixed", "rank": 4})
    _, c3 = auto_decomposition(Net(), policy='{"name": "energy", "energy": 0.5}')
    assert c2 and c3
    assert isinstance(c1, dict)


def test_policy_rank_is_what_the_info_file_says(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "info.json"
    net, changes = auto_decomposition(Net(), path,
                                      policy={"name": "fixed", "rank": 4})
    for layer in json.loads(path.read_text())["layers"]:
        seq = dict(net.named_modules())[layer["name"]]
        assert seq[0].out_channels == seq[0].groups * layer["rank"]


@pytest.mark.parametrize("policy", ["no-such-policy",
                                    {"name": "ratio", "ratio": 7},
                                    {"name": "budget", "bogus": 1}])
def test_bad_policy_is_a_value_error_and_changes_nothing(policy):
    net = Net()
    keys = list(net.state_dict())
    with pytest.raises(ValueError) as e:
        auto_decomposition(net, policy=policy)
    assert isinstance(e.value, decompd.DecompError)
    assert e.value.code_name == "bad_policy"
    assert list(net.state_dict()) == keys


def test_policy_of_wrong_type_is_a_type_error():
    with pytest.raises(TypeError):
        auto_decomposition(Net(), policy=2.0)


def test_nonfinite_weights_name_the_layer_and_change_nothing(tmp_path):
    net = Net()
    with torch.no_grad():
        net.conv2.weight[0, 0, 0, 0] = float("nan")
    keys = list(net.state_dict())
    with pytest.raises(ValueError, match="conv2") as e:
        auto_decomposition(net, tmp_path / "info.json")
    assert e.value.code_name == "nonfinite_weights"
    assert list(net.state_dict()) == keys
    assert not (tmp_path / "info.json").exists()


def test_server_is_not_available_yet():
    net = Net()
    with pytest.raises(NotImplementedError, match="service client"):
        auto_decomposition(net, server="http://localhost:8080")
    assert isinstance(net.conv1, nn.Conv2d)


def test_decompd_url_is_not_silently_ignored(monkeypatch):
    monkeypatch.setenv("DECOMPD_URL", "http://localhost:8080")
    with pytest.raises(decompd.ServiceNotAvailableError, match="DECOMPD_URL"):
        auto_decomposition(Net())


def test_not_a_module_is_a_type_error(tmp_path):
    with pytest.raises(TypeError):
        auto_decomposition({"conv.weight": torch.zeros(1)})
    with pytest.raises(TypeError):
        decompose_network(None, tmp_path / "x.json")


def test_error_in_progress_callback_cancels_and_propagates(monkeypatch):
    def boom(self, p):
        raise KeyError("stop here")

    monkeypatch.setattr(decompd._progress.Reporter, "__call__", boom)
    net = Net()
    with pytest.raises(KeyError, match="stop here"):
        auto_decomposition(net)
    assert isinstance(net.conv1, nn.Conv2d)


def test_missing_engine_says_how_to_fix():
    out = run_python("""
        import os, torch
        os.environ["DECOMPD_LIBRARY"] = "/nonexistent/libdecomp.so"
        from decompd.tensor_decompose import auto_decomposition
        try:
            auto_decomposition(torch.nn.Conv2d(8, 8, 3))
        except ImportError as e:
            print(type(e).__name__, e)
    """)
    assert "EngineNotFoundError" in out and "DECOMPD_LIBRARY" in out


# --- logging and progress -------------------------------------------------


def test_one_log_line_per_layer(caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="decompd"):
        _, changes = auto_decomposition(Net())
    lines = [r.getMessage() for r in caplog.records if r.name == "decompd"]
    for name in ("conv1", "conv2", "conv3", "conv4", "proj"):
        assert sum(line.startswith(name + ":") for line in lines) == 1, lines
    assert any("rank" in line for line in lines)
    assert any(line.startswith("proj:") and "left alone" in line
               for line in lines)


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("DECOMPD_PROGRESS", "1")
    auto_decomposition(resnet18())
    err = capsys.readouterr().err
    assert "\rdecompd [" in err and "20/20" in err
    monkeypatch.setenv("DECOMPD_PROGRESS", "0")
    auto_decomposition(resnet18())
    assert "decompd [" not in capsys.readouterr().err


def test_no_progress_bar_off_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("DECOMPD_PROGRESS", raising=False)
    auto_decomposition(resnet18())
    assert "decompd [" not in capsys.readouterr().err
