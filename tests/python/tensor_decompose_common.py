"""Shared pieces of the decompd.tensor_decompose tests (test_tensor_decompose_*):
small models, the conv MAC counter, a fresh-process runner and the paths of
the reference tool's fixtures. Not a test file itself."""

import os
import subprocess
import sys
import textwrap

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("DECOMPD_SOURCE_DIR",
                            os.path.abspath(os.path.join(HERE, "..", "..")))
FIXTURES = os.path.join(SOURCE_DIR, "tests", "fixtures")  # tests/fixtures/README.md


class Net(nn.Module):
    """The small hand-written model of the seed flows."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2, bias=False)
        self.conv3 = nn.Conv2d(64, 64, (3, 5), stride=2, padding=(1, 2))
        self.conv4 = nn.Conv2d(64, 128, 3, padding=1, groups=2)
        self.proj = nn.Conv2d(128, 64, 1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        x = self.proj(x)
        return self.fc(x.mean((2, 3)))


class ModesNet(nn.Module):
    """The model of fixtures/README.md (amct_modes_*)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(64, 128, (3, 5), padding=(1, 2))
        self.b = nn.Conv2d(128, 128, (5, 3), stride=(2, 1), padding=(2, 1))
        self.c = nn.Conv2d(128, 96, (3, 5), padding=(1, 2), bias=False)
        self.d = nn.Conv2d(96, 64, (5, 3), stride=2, padding=(2, 1))
        self.e = nn.Conv2d(64, 64, 3, padding=2, dilation=2)
        self.f = nn.Conv2d(64, 64, 1)

    def forward(self, x):
        return self.f(self.e(self.d(self.c(self.b(self.a(x))))))


def build_model(arch):
    """A model by name: "Net" (above) or a torchvision model, random init."""
    if arch == "Net":
        return Net()
    import torchvision
    return getattr(torchvision.models, arch)(weights=None)


def conv_macs(model, x):
    """{module: MACs} of every nn.Conv2d that ran in a forward pass on x,
    counted from the module structure (output elements × inputs per output
    × kernel area), per sample."""
    macs = {}
    hooks = []

    def hook(m, inp, out):
        kh, kw = m.kernel_size
        per_out = (m.in_channels // m.groups) * kh * kw
        macs[m] = macs.get(m, 0) + out[0].numel() * per_out

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(hook))
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(x[:1])
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return macs


def run_python(code, *args, timeout=600):
    """Run `code` in a fresh /usr/bin/python3 (same environment); return its
    stdout. Fails the test with the child's stderr on a non-zero exit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(SOURCE_DIR, "python"), HERE] +
        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)]
                          + [str(a) for a in args],
                          env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"child process failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def project_low_rank(model, order="vertical_first", fraction=0.25):
    """Give every conv of `model` with kh, kw > 1 an exactly low-rank kernel
    in the `order`'s reshape (DESIGN "The decomposition"): per group,
    M[(i,h),(o,w)] (vertical_first) or M[(i,w),(o,h)] (horizontal_first)
    truncated to rank max(1, fraction · its largest rank). The decomposition
    at that rank must then reproduce the model exactly; no full rank is
    needed (the engine leaves alone a conv that full rank would not make
    cheaper, which is every conv). Returns {name: rank}."""
    ranks = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if type(m) is not nn.Conv2d or min(m.kernel_size) < 2:
                continue
            W = m.weight.double()
            cout, I, kh, kw = W.shape
            g = m.groups
            O = cout // g
            vertical = order == "vertical_first"
            perm = (1, 2, 0, 3) if vertical else (1, 3, 0, 2)
            rows, cols = (I * kh, O * kw) if vertical else (I * kw, O * kh)
            r = max(1, int(min(rows, cols) * fraction))
            parts = []
            for j in range(g):
                Wj = W[j * O:(j + 1) * O].permute(*perm)
                shape = Wj.shape
                U, S, Vh = torch.linalg.svd(Wj.reshape(rows, -1),
                                            full_matrices=False)
                M = (U[:, :r] * S[:r]) @ Vh[:r]
                inv = [perm.index(k) for k in range(4)]
                parts.append(M.reshape(shape).permute(*inv))
            m.weight.copy_(torch.cat(parts).to(m.weight.dtype))
            ranks[name] = r
    return ranks


def lowrank_policy(order="vertical_first"):
    """A policy that finds the exact low rank project_low_rank gave."""
    return {"name": "max_error", "max_error": 1e-5, "order": order}
