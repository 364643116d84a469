"""The reference tool's three flows, verbatim but for the import line, on
torchvision models (random init) and a small hand-written Net:

- online: auto_decomposition, build the optimizer, train a few steps;
- offline step 1: auto_decomposition with an info file, torch.save of the
  state dict;
- offline step 2, in a fresh process: decompose_network, then
  load_state_dict(strict=True); its outputs equal step 1's model's exactly.

Each also checks that `changes` is exactly the set of convs replaced and
that the state dict's keys became NAME.0.weight, NAME.1.weight, NAME.1.bias.
"""

import json

import pytest
import torch
import torch.nn as nn

from decompd.tensor_decompose import auto_decomposition
from tensor_decompose_common import build_model, run_python

# (model, input side): inputs kept small, the flows are about structure.
MODELS = [
    ("Net", 32),
    ("resnet18", 64),
    ("resnet50", 64),
    ("vgg16", 32),
    ("mobilenet_v2", 64),
    ("densenet121", 64),
]



def conv_slots(model):
    """{name: (module, has_bias)} of the model's nn.Conv2d layers."""
    return {n: (m, m.bias is not None) for n, m in model.named_modules()
            if type(m) is nn.Conv2d}


def check_structure(before, model, changes, info=None):
    """changes is exactly the replaced convs; the others are untouched; the
    state dict has the new keys and not the old ones."""
    modules = dict(model.named_modules())
    replaced = set()
    for name, (conv, _) in before.items():
        now = modules[name]
        if now is conv:
            continue
        assert isinstance(now, nn.Sequential) and len(now) == 2, name
        assert all(type(m) is nn.Conv2d for m in now), name
        replaced.add(name)
    assert set(changes) == replaced
    assert replaced, "the default policy decomposed nothing"
    for name in changes:
        assert changes[name] == [f"{name}.0", f"{name}.1"]
    keys = set(model.state_dict())
    for name, (_, has_bias) in before.items():
        if name in replaced:
            assert f"{name}.weight" not in keys and f"{name}.bias" not in keys
            assert {f"{name}.0.weight", f"{name}.1.weight"} <= keys
            assert f"{name}.0.bias" not in keys
            assert (f"{name}.1.bias" in keys) == has_bias
        else:
            assert f"{name}.weight" in keys
    if info is not None:
        assert set(info["changes"]) == replaced
        assert [entry["name"] for entry in info["layers"]
                if entry["name"] in replaced] == list(changes)


def train_steps(net, size, steps=2):
    # The seed's online flow: build the optimizer after decomposing, train.
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    net.train()
    losses = []
    for _ in range(steps):
        x = torch.randn(2, 3, size, size)
        y = torch.randint(0, 10, (2,))
        optimizer.zero_grad()
        out = net(x)
        loss = criterion(out[:, :10], y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# Offline step 2, run in a fresh process.
STEP2 = """
import json, sys, torch
from decompd.tensor_decompose import decompose_network
from tensor_decompose_common import build_model
arch, info_path, weights_path, io_path = sys.argv[1:5]
torch.manual_seed(123)            # a different init: the weights must come from the file
net = build_model(arch)
net, changes = decompose_network(model=net, decompose_info_path=info_path)
net.load_state_dict(torch.load(weights_path), strict=True)
net.eval()
io = torch.load(io_path)
with torch.no_grad():
    y = net(io["x"])
assert torch.equal(y, io["y"]), (y - io["y"]).abs().max().item()
print(json.dumps(changes))
"""


@pytest.mark.parametrize("arch,size", MODELS, ids=[m for m, _ in MODELS])
def test_seed_flows(arch, size, tmp_path):
    torch.manual_seed(0)

    # --- online -----------------------------------------------------------
    net = build_model(arch)
    before = conv_slots(net)
    snapshot = {n: m for n, (m, _) in before.items()}
    net, changes = auto_decomposition(model=net)
    check_structure(before, net, changes)
    first = dict(net.named_modules())[next(iter(changes))][0].weight
    w0 = first.detach().clone()
    losses = train_steps(net, size)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(first.detach(), w0), "decomposed conv not trained"
    del net, snapshot, first

    # --- offline, step 1 --------------------------------------------------
    torch.manual_seed(1)
    net = build_model(arch)
    before = conv_slots(net)
    info_path = tmp_path / "decompose" / "decompose_info.json"
    net, changes = auto_decomposition(model=net,
                                      decompose_info_path=str(info_path))
    torch.save(net.state_dict(), tmp_path / "decomposed.pth")
    info = json.loads(info_path.read_text())
    check_structure(before, net, changes, info)
    net.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = net(x)
    torch.save({"x": x, "y": y}, tmp_path / "io.pth")
    del net

    # --- offline, step 2, in a fresh process ------------------------------
    out = run_python(STEP2, arch, info_path, tmp_path / "decomposed.pth",
                     tmp_path / "io.pth")
    assert json.loads(out.strip().splitlines()[-1]) == changes
