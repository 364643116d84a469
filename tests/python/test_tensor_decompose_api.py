"""auto_decomposition's semantics on the real engine: exactness (at full rank,
and at the rank of kernels of exactly low rank), the default policy's MAC
target, the bare-Conv2d case, shared convs, what the
new parameters keep, policies, errors, logging and the progress bar."""

import copy
import json
import logging
import re

import pytest
import torch
import torch.nn as nn

import decompd
import decompd._progress
from decompd.tensor_decompose import auto_decomposition, decompose_network
from tensor_decompose_common import (ModesNet, Net, conv_macs, lowrank_policy,
                                     project_low_rank, rel_err, run_python)

# Spatial pairs only: these tests are about the k x k convs' spatial SVD
# (channel_svd and Linear layers: test_channel_linear_torch.py).
SMALL_RANK = {"name": "fixed", "rank": 2, "methods": ["spatial"]}
# Full rank is never cheaper: the engine keeps it only when told to.
FULL_RANK = {"name": "ratio", "ratio": 1.0, "require_cheaper": False,
             "methods": ["spatial"]}


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


def first_input(net, size, batch=2):
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    return torch.randn(batch, conv.in_channels, size, size)


@pytest.mark.parametrize("make,size", [(Net, 32), (ModesNet, 24), (Odd, 20),
                                       (resnet18, 64)],
                         ids=["Net", "ModesNet", "Odd", "resnet18"])
def test_full_rank_policy_reproduces_outputs(make, size):
    torch.manual_seed(0)
    net = make().eval()
    x = first_input(net, size)
    eligible = {n for n, m in net.named_modules()
                if type(m) is nn.Conv2d and min(m.kernel_size) > 1}
    with torch.no_grad():
        ref = net(x)
    net, changes = auto_decomposition(net, policy=FULL_RANK)
    assert set(changes) == eligible
    with torch.no_grad():
        out = net(x)
    err = rel_err(out, ref)
    print(f"{make.__name__} at full rank: {len(changes)} convs, relative "
          f"error {err:.2e}")
    assert err <= 1e-4


EXACT_CASES = [(make, size, order)
               for make, size in [(Net, 32), (ModesNet, 24), (Odd, 20)]
               for order in ["vertical_first", "horizontal_first"]]


@pytest.mark.parametrize("make,size,order", EXACT_CASES,
                         ids=[f"{m.__name__}-{o}" for m, _, o in EXACT_CASES])
def test_exact_at_the_kernels_rank(make, size, order):
    # Kernels of exactly rank r: the decomposition at rank r (cheaper, so
    # kept by default) gives the original outputs, whatever stride, padding,
    # padding mode, dilation or groups, in either order.
    torch.manual_seed(0)
    net = make().eval()
    ranks = project_low_rank(net, order)
    x = first_input(net, size)
    with torch.no_grad():
        ref = net(x)
    net, changes = auto_decomposition(net, policy=lowrank_policy(order))
    assert set(changes) == set(ranks)
    for name, r in ranks.items():
        seq = dict(net.named_modules())[name]
        assert seq[0].out_channels == seq[0].groups * r
        assert (seq[0].kernel_size[1] == 1) == (order == "vertical_first")
    with torch.no_grad():
        out = net(x)
    err = rel_err(out, ref)
    print(f"{make.__name__} {order} at the kernels' rank: {len(changes)} "
          f"convs, relative error {err:.2e}")
    assert err <= 1e-4


def test_full_rank_is_left_alone_by_default():
    # Full rank never makes a conv cheaper, so unless require_cheaper is
    # false the engine leaves it alone: the model is exactly the original.
    net = Net()
    ref = copy.deepcopy(net)
    net, changes = auto_decomposition(net, policy={"name": "ratio",
                                                   "ratio": 1.0})
    assert changes == {}
    assert all(torch.equal(a, b) for a, b in
               zip(net.state_dict().values(), ref.state_dict().values()))


def eligible_mac_drop(make, x, **kwargs):
    """(eligible-conv MAC ratio, all-conv MAC ratio, #decomposed,
    #eligible) of the default policy on make(), MACs counted with forward
    hooks on x; eligible = kh > 1 and kw > 1 (what the budget spends on)."""
    torch.manual_seed(0)
    net = make()
    eligible = {m for m in net.modules()
                if isinstance(m, nn.Conv2d) and min(m.kernel_size) > 1}
    before = conv_macs(net, x)
    rest = sum(v for m, v in before.items() if m not in eligible)
    net, changes = auto_decomposition(net, **kwargs)
    after = sum(conv_macs(net, x).values())
    total = sum(before.values())
    return ((total - rest) / (after - rest), total / after, len(changes),
            len(eligible))


def test_default_policy_meets_its_mac_target_with_input_sizes():
    # With the input sizes (example_input), the budget counts whole-layer
    # MACs: the real conv MACs of the eligible convs drop by its 2x target.
    x = torch.randn(1, 3, 224, 224)
    ratio, whole, n, m = eligible_mac_drop(resnet18, x, example_input=x)
    print(f"resnet18 @224, example_input: eligible conv MACs / {ratio:.3f}, "
          f"all conv MACs / {whole:.3f}, {n} of {m} eligible convs")
    assert 2.0 <= ratio <= 2.2


def test_default_policy_without_input_sizes(tmp_path):
    # Without them (the reference's API has no input) the engine counts each
    # layer's cost per output pixel: the target holds in that measure (the
    # info file's summary); the real MAC drop is printed for the record.
    x = torch.randn(1, 3, 224, 224)
    path = tmp_path / "info.json"
    ratio, whole, n, m = eligible_mac_drop(resnet18, x,
                                           decompose_info_path=path)
    summary = json.loads(path.read_text())["summary"]
    per_pixel = summary["macs_before"] / summary["macs_after"]
    print(f"resnet18 @224, no input sizes: per-pixel MACs / {per_pixel:.3f}; "
          f"real eligible conv MACs / {ratio:.3f}, all conv MACs / "
          f"{whole:.3f}, {n} of {m} eligible convs")
    assert per_pixel >= 2.0 * 0.99
    assert ratio > 1.0


# --- the reference's semantics -------------------------------------------


def test_bare_conv_is_left_untouched():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 64, 3, padding=1)
    project_low_rank(conv)
    saved = copy.deepcopy(conv.state_dict())
    new, changes = auto_decomposition(conv, policy=lowrank_policy())
    assert type(conv) is nn.Conv2d
    assert all(torch.equal(v, conv.state_dict()[k]) for k, v in saved.items())
    assert new is not conv and isinstance(new, nn.Sequential)
    assert changes == {"": ["0", "1"]}
    assert set(new.state_dict()) == {"0.weight", "1.weight", "1.bias"}
    x = torch.randn(1, 32, 12, 12)
    with torch.no_grad():
        assert rel_err(new(x), conv(x)) <= 1e-4


def test_bare_conv_not_decomposed_is_returned_as_is():
    conv = nn.Conv2d(32, 64, 1)  # amct: spatial only, so never a 1x1
    new, changes = auto_decomposition(conv, policy="amct")
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
    project_low_rank(net)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        ref = net(x)
    net, changes = auto_decomposition(net, policy=lowrank_policy())
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
    net, changes = auto_decomposition(net, policy=SMALL_RANK)
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


def test_channels_last_weights_are_read_in_place_and_kept():
    torch.manual_seed(0)
    net = Net().eval().to(memory_format=torch.channels_last)
    x = first_input(net, 16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = net(x)
    net, changes = auto_decomposition(net, policy=FULL_RANK)
    assert changes
    for name in changes:
        for conv in dict(net.named_modules())[name]:
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert rel_err(net(x), ref) <= 1e-4


def test_meta_weights_are_refused():
    net = Net().to("meta")
    with pytest.raises(ValueError, match="meta"):
        auto_decomposition(net)
    assert type(net.conv1) is nn.Conv2d


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_keep_their_dtype(dtype):
    torch.manual_seed(0)
    net32 = Net()
    net = copy.deepcopy(net32).to(dtype)
    net, changes = auto_decomposition(net, policy=SMALL_RANK)
    net32, changes32 = auto_decomposition(net32, policy=SMALL_RANK)
    assert changes and changes == changes32
    for p in net.parameters():
        assert p.dtype == dtype
    # The same factors as from float32 weights, to the dtype's precision.
    sd32 = net32.state_dict()
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert rel_err(v.float(), sd32[k]) < 2e-2, k


def test_only_plain_conv2d_is_decomposed(tmp_path):
    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(nn.Conv2d(16, 32, 3), MyConv(32, 32, 3),
                        nn.utils.weight_norm(nn.Conv2d(32, 32, 3)),
                        nn.Flatten(), nn.Linear(32, 4))
    path = tmp_path / "info.json"
    net, changes = auto_decomposition(net, str(path), policy=SMALL_RANK)
    assert set(changes) == {"0"}
    assert type(net[1]) is MyConv and type(net[2]) is nn.Conv2d
    skipped = {s["name"]: s["reason"]
               for s in json.loads(path.read_text())["skipped"]}
    assert "types" in skipped["4"]  # a Linear, not among the policy's types
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
        assert layer["method"] in ("spatial_svd", "channel_svd")
        if layer["method"] == "spatial_svd":
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


# The service path itself is tested against the real daemon in tests/client.
def test_unreachable_server_is_a_connection_error():
    net = Net()
    with pytest.raises(ConnectionError, match="cannot connect"):
        auto_decomposition(net, server="http://127.0.0.1:1")
    assert isinstance(net.conv1, nn.Conv2d)


def test_decompd_url_is_not_silently_ignored(monkeypatch):
    monkeypatch.setenv("DECOMPD_URL", "http://127.0.0.1:1")
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
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


def many_convs(n=12):
    return nn.Sequential(*[nn.Conv2d(16, 16, 3, padding=1) for _ in range(n)])


class FakeTTY:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_hooks_on_a_replaced_conv_are_named_in_a_warning(caplog):
    net = Net()
    net.conv2.register_forward_hook(lambda *a: None)
    with caplog.at_level(logging.WARNING, logger="decompd"):
        _, changes = auto_decomposition(net, policy=SMALL_RANK)
    assert "conv2" in changes
    assert any(r.levelno == logging.WARNING and "conv2" in r.getMessage()
               and "hooks" in r.getMessage() for r in caplog.records)


def test_progress_bar_on_a_terminal(monkeypatch):
    monkeypatch.delenv("DECOMPD_PROGRESS", raising=False)
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    auto_decomposition(many_convs())
    assert "\rdecompd [" in tty.text and "12/12" in tty.text
    assert tty.text.endswith("\n")
    tty.text = ""
    auto_decomposition(many_convs(4))  # few layers: no bar
    assert tty.text == ""
    monkeypatch.setenv("DECOMPD_PROGRESS", "0")
    auto_decomposition(many_convs())
    assert tty.text == ""


def one_large_conv():
    """A layer the engine runs on the calling thread with every BLAS thread
    (m·n·k >= 2^32: 1800x1800 here), where it reports from inside."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(600, 600, 3, padding=1))


def test_progress_bar_moves_inside_a_long_layer(monkeypatch):
    """One large layer (the engine's block Krylov path): WORKING reports
    draw the bar with the layer's share done, even for a model too small
    for a bar otherwise."""
    monkeypatch.delenv("DECOMPD_PROGRESS", raising=False)
    monkeypatch.setattr("decompd._engine.PROGRESS_INTERVAL", 0.0)
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    auto_decomposition(one_large_conv(), policy={"name": "fixed", "rank": 64})
    assert "\rdecompd [" in tty.text and "0/1 0 " in tty.text, tty.text
    shares = [int(m) for m in re.findall(r"0/1 0 (\d+)%", tty.text)]
    assert len(shares) > 2 and shares == sorted(shares), shares
    assert "1/1 0" in tty.text and tty.text.endswith("\n")


def test_keyboard_interrupt_inside_a_long_layer_stops_there(monkeypatch):
    """Ctrl-C arrives as a KeyboardInterrupt in the progress callback; with
    reports inside the layer the run stops there, and the model is left as
    it was."""
    monkeypatch.setattr("decompd._engine.PROGRESS_INTERVAL", 0.0)
    seen = []

    def interrupt(self, p):
        seen.append(p["phase"])
        if p["phase"] == 3:  # WORKING
            raise KeyboardInterrupt

    monkeypatch.setattr(decompd._progress.Reporter, "__call__", interrupt)
    net = one_large_conv()
    with pytest.raises(KeyboardInterrupt):
        auto_decomposition(net, policy={"name": "fixed", "rank": 64})
    assert isinstance(net[0], nn.Conv2d)
    assert seen == [1, 3], seen  # START, then the first report inside


def test_no_progress_bar_off_a_terminal(capsys, monkeypatch):
    monkeypatch.delenv("DECOMPD_PROGRESS", raising=False)
    auto_decomposition(many_convs())
    assert "decompd [" not in capsys.readouterr().err
    monkeypatch.setenv("DECOMPD_PROGRESS", "1")
    auto_decomposition(many_convs())
    assert "\rdecompd [" in capsys.readouterr().err
