#!/usr/bin/python3
"""bench_quality.py — what decomposition costs in quality: plain SVD, ASVD-style
activation scaling and whitened (SVD-LLM) decomposition, side by side.

One run, at 10/20/30/40% fewer parameters in the decomposed layers (uniform
per-layer ranks: R = (1 - x)·m·n/(m + n) for an m×n factored matrix), on
two models trained here on real data that no one here wrote:

  (a) a small decoder-only transformer, byte-level, trained on the Python
      standard library's source (/usr/lib/python3.11/**/*.py); perplexity
      per byte on held-out files. Every nn.Linear of its blocks (q, k, v, o,
      fc1, fc2) is decomposed (svd); the tied embedding/head is not.
  (b) a small CNN on sklearn's digits (8x8); accuracy and cross-entropy on a
      held-out split. Every Conv2d (channel_svd) and nn.Linear (svd).

For each model and ratio it reports the metric before any fine-tuning and
after one short fine-tuning epoch, for the three methods and the dense model
(fine-tuned the same way), the per-layer output errors
‖(W − W̃)Xᵀ‖/‖WXᵀ‖ on the calibration data and on held-out data, and a
verdict: the whitened decomposition must be the best of the three at every
ratio before fine-tuning (exit status 1 if not). The gaps to the dense model
are set beside SVD-LLM's published ones (LLaMA-7B, WikiText-2, 20% fewer
parameters: plain SVD 20061, ASVD 11.14, SVD-LLM 7.94, dense 5.68; arXiv
2403.07378, Table 1).

Methods:
  plain     SVD of W, factors U_R Σ_R^½ and Σ_R^½ V_Rᵀ;
  asvd      ASVD (Yuan et al. 2023, arXiv 2312.05821): W's input columns
            scaled by s_j = (mean |x_j|)^α, α = 0.5, SVD, truncate, unscale.
            It is the peer, implemented here, not a decompd feature;
  whitened  G = XᵀX of the layer's inputs, S = chol(G) (shift
            1e-6·tr(G)/n only when G is not positive definite), SVD of W·S,
            factors U_R Σ_R^½ and Σ_R^½ V_Rᵀ S⁻¹.
Plain and whitened run through decompd (auto_decomposition with a `fixed`
policy and per-layer rank overrides; decompd.calibrate for the Grams) when
the installed package has calibration support; the benchmark's own torch
reference implementations of both always run too, and the largest
difference between decompd's W̃ and the reference's is printed per method.

    /usr/bin/python3 bench/bench_quality.py            # everything (~25 min, 2 cores)
    /usr/bin/python3 bench/bench_quality.py --quick    # smaller models, 2 ratios
    /usr/bin/python3 bench/bench_quality.py --speed    # + 4096x4096, 11008x4096 timing

Trained models are cached in --cache (default /tmp/decompd-quality), keyed
by their hyper-parameters, seed and the training data's digest. --speed adds
the whitened decomposition of 4096x4096 and 11008x4096 Linear layers at 20%
fewer parameters through decompd, in child processes (peak RSS), against
torch.linalg.svd of the same whitened matrix.
"""
import argparse
import copy
import glob
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time

# OpenMP threads that spin at barriers are many times slower on a shared,
# oversubscribed machine (an epoch of the digits CNN: 43 s spinning, 1.4 s
# passive, at load 14 on 2 cores); set before torch loads its runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

RATIOS = [0.10, 0.20, 0.30, 0.40]
METHODS = ["plain", "asvd", "whitened"]
# A diagnostic fourth row, reference only and outside the verdict: the same
# W̃ as whitened, its factors split with S = chol(G) of the Gram as summed
# (issue 13's formula taken literally). S then scales with √N, so the
# input-side factor Σ½VᵀS⁻¹ shrinks as N^-¼ and the output side grows as
# N^¼: the split, not W̃, depends on how much calibration data there was,
# and one epoch of Adam fine-tuning (steps of about lr on every weight,
# whatever its size) sees it. decompd's engine first scales G by a power
# of two that brings its mean diagonal near 1 (src/core/calib.c, for
# float32's range), which also balances the pair; the "whitened" reference
# does the same, so decompd's factors can be compared with it directly.
DIAGNOSTIC = ["whitened_sum"]
LABEL = {"plain": "plain", "asvd": "asvd", "whitened": "whitened",
         "whitened_sum": "whitened, Σ-Gram split", "dense": "dense"}
ASVD_ALPHA = 0.5
# SVD-LLM, arXiv 2403.07378 Table 1: LLaMA-7B, WikiText-2 perplexity at 20%
# fewer parameters.
PUBLISHED = {"dense": 5.68, "plain": 20061.0, "asvd": 11.14, "whitened": 7.94}

torch = nn = F = None  # imported in main() (the --speed child needs no torch)


def lazy_torch(threads):
    global torch, nn, F
    import torch as _t
    import torch.nn as _nn
    import torch.nn.functional as _F
    torch, nn, F = _t, _nn, _F
    torch.set_num_threads(threads)


def log(*a):
    print(*a, flush=True)


# --- data ----------------------------------------------------------------------

def stdlib_corpus(root="/usr/lib/python3.11"):
    """(train bytes, held-out bytes, digest): every .py file under root,
    sorted; a file is held out when the first byte of sha256(its path
    relative to root) is below 26 (about 10%)."""
    files = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    if not files:
        sys.exit(f"bench: no .py files under {root}")
    train, held = [], []
    h = hashlib.sha256()
    for p in files:
        rel = os.path.relpath(p, root)
        with open(p, "rb") as f:
            data = f.read()
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        (held if hashlib.sha256(rel.encode()).digest()[0] < 26 else train).append(data)
    sep = b"\n\n"
    return sep.join(train), sep.join(held), h.hexdigest()[:16], len(train), len(held)


def digits_split(seed=0):
    from sklearn.datasets import load_digits
    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_test = len(y) // 4
    te, tr = perm[:n_test], perm[n_test:]
    return X[tr], y[tr], X[te], y[te]


# --- models --------------------------------------------------------------------

def build_models():
    """Define the model classes once torch is imported."""
    global Block, TinyLM, DigitsNet

    class Block(nn.Module):
        """Pre-LN transformer block; separate q/k/v so every projection is a
        plain nn.Linear (q, k, v read the same input: one Gram)."""

        def __init__(self, d, heads):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.o = nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x, mask):
            B, T, D = x.shape
            h = self.heads
            y = self.ln1(x)
            q, k, v = [m(y).view(B, T, h, D // h).transpose(1, 2)
                       for m in (self.q, self.k, self.v)]
            a = torch.baddbmm(mask[:T, :T].expand(B * h, T, T),
                              q.reshape(B * h, T, -1),
                              k.reshape(B * h, T, -1).transpose(1, 2),
                              alpha=1.0 / math.sqrt(D // h)).softmax(-1)
            z = torch.bmm(a, v.reshape(B * h, T, -1)).view(B, h, T, -1)
            x = x + self.o(z.transpose(1, 2).reshape(B, T, D))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class TinyLM(nn.Module):
        def __init__(self, d, layers, heads, ctx):
            super().__init__()
            self.emb = nn.Embedding(256, d)
            self.pos = nn.Embedding(ctx, d)
            self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
            self.ln = nn.LayerNorm(d)
            self.register_buffer("mask", torch.full((ctx, ctx), float("-inf")).triu(1),
                                 persistent=False)
            nn.init.normal_(self.emb.weight, std=0.02)
            nn.init.normal_(self.pos.weight, std=0.02)

        def forward(self, idx):
            x = self.emb(idx) + self.pos.weight[:idx.shape[1]]
            for b in self.blocks:
                x = b(x, self.mask)
            return F.linear(self.ln(x), self.emb.weight)  # tied head

    class DigitsNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
            self.fc1 = nn.Linear(128 * 2 * 2, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = F.max_pool2d(F.relu(self.conv3(x)), 2)
            return self.fc2(F.relu(self.fc1(x.flatten(1))))


def target_layers(model, prefix=""):
    """Names of the decomposable layers (plain nn.Linear / nn.Conv2d), in
    model order, under prefix."""
    return [n for n, m in model.named_modules()
            if type(m) in (nn.Linear, nn.Conv2d) and n.startswith(prefix)]


# --- training (cached) ---------------------------------------------------------

def cache_path(cache, kind, hp):
    key = hashlib.sha256(json.dumps(hp, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache, f"{kind}-{key}.pt")


class Windows:
    """Byte windows of length ctx+1 from a byte string, drawn with a fixed
    generator (training) or tiled without overlap (evaluation)."""

    def __init__(self, data, ctx):
        self.t = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        self.ctx = ctx

    def random(self, batch, gen):
        i = torch.randint(0, len(self.t) - self.ctx - 1, (batch,), generator=gen)
        return torch.stack([self.t[j:j + self.ctx + 1] for j in i.tolist()])

    def tiled(self, n):
        step = self.ctx + 1
        n = min(n, len(self.t) // step)
        return self.t[:n * step].view(n, step)


def lm_loss(model, xb):
    logits = model(xb[:, :-1])
    return F.cross_entropy(logits.reshape(-1, 256), xb[:, 1:].reshape(-1))


def train_lm(hp, train, cache):
    path = cache_path(cache, "lm", hp)
    torch.manual_seed(hp["seed"])
    model = TinyLM(hp["d"], hp["layers"], hp["heads"], hp["ctx"])
    if os.path.exists(path):
        blob = torch.load(path)
        model.load_state_dict(blob["state"])
        log(f"lm: cached {path} (trained in {blob['seconds']:.0f} s, "
            f"final train loss {blob['loss']:.3f})")
        return model
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=0.1,
                            betas=(0.9, 0.95), foreach=True)
    gen = torch.Generator().manual_seed(hp["seed"] + 1)
    steps, warm = hp["steps"], max(1, hp["steps"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) *
        (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    t0, c0, ema = time.perf_counter(), time.process_time(), None
    model.train()
    for s in range(steps):
        loss = lm_loss(model, train.random(hp["batch"], gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (s + 1) % max(1, steps // 10) == 0:
            log(f"lm: step {s + 1}/{steps} loss {ema:.3f} "
                f"({time.perf_counter() - t0:.0f} s, {time.process_time() - c0:.0f} s of CPU)")
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    os.makedirs(cache, exist_ok=True)
    torch.save({"state": model.state_dict(), "hp": hp, "seconds": secs,
                "cpu_seconds": cpu, "loss": ema}, path + ".tmp")
    os.replace(path + ".tmp", path)
    log(f"lm: trained in {secs:.0f} s ({cpu:.0f} s of CPU), cached in {path}")
    return model


def train_digits(hp, data, cache):
    path = cache_path(cache, "digits", hp)
    torch.manual_seed(hp["seed"])
    model = DigitsNet()
    if os.path.exists(path):
        model.load_state_dict(torch.load(path)["state"])
        log(f"digits: cached {path}")
        return model
    Xtr, ytr = data[0], data[1]
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    gen = torch.Generator().manual_seed(hp["seed"] + 1)
    t0 = time.perf_counter()
    model.train()
    for ep in range(hp["epochs"]):
        for g in opt.param_groups:
            g["lr"] = hp["lr"] * 0.5 * (1 + math.cos(math.pi * ep / hp["epochs"]))
        perm = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(perm), hp["batch"]):
            b = perm[i:i + hp["batch"]]
            loss = F.cross_entropy(model(Xtr[b]), ytr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    os.makedirs(cache, exist_ok=True)
    torch.save({"state": model.state_dict(), "hp": hp}, path + ".tmp")
    os.replace(path + ".tmp", path)
    log(f"digits: trained in {time.perf_counter() - t0:.0f} s, cached in {path}")
    return model


# --- evaluation and fine-tuning ------------------------------------------------

def eval_lm(model, batches):
    """Perplexity per byte over the held-out windows."""
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for xb in batches:
            logits = model(xb[:, :-1])
            tot += F.cross_entropy(logits.reshape(-1, 256), xb[:, 1:].reshape(-1),
                                   reduction="sum").item()
            n += xb[:, 1:].numel()
    return {"ppl": math.exp(tot / n), "nll": tot / n}


def eval_digits(model, X, y):
    model.eval()
    with torch.no_grad():
        out = model(X)
    return {"acc": (out.argmax(1) == y).float().mean().item(),
            "nll": F.cross_entropy(out, y).item()}


def finetune_lm(model, batches, lr):
    """One epoch over the fine-tuning batches (the same for every model)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0,
                            foreach=True)
    model.train()
    for xb in batches:
        loss = lm_loss(model, xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def finetune_digits(model, X, y, lr, batch, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(perm), batch):
        b = perm[i:i + batch]
        loss = F.cross_entropy(model(X[b]), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


# --- activation statistics (the reference's calibration) -----------------------

def layer_inputs(mod, x):
    """The rows the layer's matrix multiplies: tokens for a Linear, unfolded
    patches (c, h, w order) for a Conv2d."""
    if type(mod) is nn.Linear:
        return x.reshape(-1, x.shape[-1])
    assert mod.padding_mode == "zeros" and mod.groups == 1
    cols = F.unfold(x, mod.kernel_size, dilation=mod.dilation,
                    padding=mod.padding, stride=mod.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def collect_stats(model, names, batches, forward):
    """{name: {"gram": float64 [n, n], "absmean": float64 [n], "count": N}}
    over every batch, on the model as it is."""
    mods = dict(model.named_modules())
    stats = {n: {"gram": 0, "abssum": 0, "count": 0} for n in names}
    hooks = []
    for n in names:
        def hook(mod, inp, n=n):
            X = layer_inputs(mod, inp[0].detach()).double()
            s = stats[n]
            s["gram"] = s["gram"] + X.T @ X
            s["abssum"] = s["abssum"] + X.abs().sum(0)
            s["count"] += X.shape[0]
        hooks.append(mods[n].register_forward_pre_hook(hook))
    model.eval()
    with torch.no_grad():
        for b in batches:
            forward(model, b)
    for h in hooks:
        h.remove()
    for s in stats.values():
        s["absmean"] = s.pop("abssum") / s["count"]
    return stats


# --- reference decompositions --------------------------------------------------

def weight_matrix(mod):
    """The factored matrix, float64 [out, in] (a conv: [Cout, Cin·kh·kw])."""
    return mod.weight.detach().double().reshape(mod.weight.shape[0], -1)


def uniform_rank(m, n, x):
    """Largest rank with R·(m + n) <= (1 - x)·m·n, at least 1."""
    return max(1, int(math.floor((1.0 - x) * m * n / (m + n))))


def cholesky_lower(G):
    """S with S Sᵀ = G; the contract's shift λ = 1e-6·tr(G)/n only when G
    is not positive definite. Returns (S, shifted)."""
    S, info = torch.linalg.cholesky_ex(G)
    if int(info) == 0:
        return S, False
    lam = 1e-6 * torch.trace(G) / G.shape[0]
    S, info = torch.linalg.cholesky_ex(G + lam * torch.eye(G.shape[0], dtype=G.dtype))
    if int(info) != 0:
        raise RuntimeError("Gram not positive definite even after the shift")
    return S, True


def factors(W, R, method, stat):
    """(A [R, in], B [out, R]) with W̃ = B·A, float64."""
    if method == "plain":
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        r = s[:R].sqrt()
        return r[:, None] * Vh[:R], U[:, :R] * r
    if method == "asvd":
        sc = stat["absmean"].clamp_min(0) ** ASVD_ALPHA
        sc = sc.clamp_min(1e-6 * float(sc.max()))  # a dead input stays finite
        U, s, Vh = torch.linalg.svd(W * sc, full_matrices=False)
        r = s[:R].sqrt()
        return (r[:, None] * Vh[:R]) / sc, U[:, :R] * r
    if method in ("whitened", "whitened_sum"):
        G = stat["gram"]
        if method == "whitened":  # the engine's exact power-of-two scaling
            G = G * 2.0 ** -math.frexp(float(torch.diagonal(G).mean()))[1]
        S, _ = cholesky_lower(G)
        U, s, Vh = torch.linalg.svd(W @ S, full_matrices=False)
        r = s[:R].sqrt()
        A = torch.linalg.solve_triangular(S, r[:, None] * Vh[:R], upper=False,
                                          left=False)  # X·S = Σ½Vᵀ
        return A, U[:, :R] * r
    raise ValueError(method)


def pair_module(mod, A, B):
    """The nn.Sequential decompd builds for the layer (README, "The
    decomposition")."""
    R = A.shape[0]
    dt = mod.weight.dtype
    if type(mod) is nn.Linear:
        first = nn.Linear(mod.in_features, R, bias=False)
        second = nn.Linear(R, mod.out_features, bias=mod.bias is not None)
        first.weight.data = A.to(dt).contiguous()
        second.weight.data = B.to(dt).contiguous()
    else:
        first = nn.Conv2d(mod.in_channels, R, mod.kernel_size, stride=mod.stride,
                          padding=mod.padding, dilation=mod.dilation, bias=False,
                          padding_mode=mod.padding_mode)
        second = nn.Conv2d(R, mod.out_channels, 1, bias=mod.bias is not None)
        first.weight.data = A.to(dt).reshape(R, *mod.weight.shape[1:]).contiguous()
        second.weight.data = B.to(dt).reshape(mod.out_channels, R, 1, 1).contiguous()
    if mod.bias is not None:
        second.bias.data = mod.bias.detach().clone()
    return nn.Sequential(first, second)


def set_module(model, name, new):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def decompose_reference(model, names, ranks, method, stats):
    net = copy.deepcopy(model)
    mods = dict(net.named_modules())
    for n in names:
        A, B = factors(weight_matrix(mods[n]), ranks[n], method, stats[n])
        set_module(net, n, pair_module(mods[n], A, B))
    return net


def approx_of(net, name):
    """W̃ = B·A of a decomposed layer, float64 [out, in]."""
    pair = net.get_submodule(name)
    A = pair[0].weight.detach().double().reshape(pair[0].weight.shape[0], -1)
    B = pair[1].weight.detach().double().reshape(pair[1].weight.shape[0], -1)
    return B @ A


def factor_diff(net, ref, name):
    """max over both factors of max|F_decompd − F_ref| / max|F_ref|, each
    rank-1 term's sign taken from the reference (an SVD fixes a singular
    pair only up to sign)."""
    a, b = net.get_submodule(name), ref.get_submodule(name)
    A1 = a[0].weight.detach().double().reshape(a[0].weight.shape[0], -1)
    A2 = b[0].weight.detach().double().reshape(b[0].weight.shape[0], -1)
    B1 = a[1].weight.detach().double().reshape(a[1].weight.shape[0], -1)
    B2 = b[1].weight.detach().double().reshape(b[1].weight.shape[0], -1)
    sg = torch.sign((A1 * A2).sum(1))
    sg[sg == 0] = 1
    return max(float((A1 * sg[:, None] - A2).abs().max() / A2.abs().max()),
               float((B1 * sg - B2).abs().max() / B2.abs().max()))


def output_error(W, Wt, G):
    """‖(W − W̃)Xᵀ‖_F / ‖WXᵀ‖_F from the Gram G = XᵀX."""
    D = W - Wt
    num = torch.einsum("oi,ij,oj->", D, G, D).clamp_min(0)
    den = torch.einsum("oi,ij,oj->", W, G, W)
    return math.sqrt(float(num) / float(den))


# --- decompd -------------------------------------------------------------------

def decompd_api():
    """(decompd module, auto_decomposition) when the importable decompd has
    calibration support, else (None, reason)."""
    sys.path.append(os.path.join(ROOT, "python"))  # PYTHONPATH first
    try:
        import decompd
        from decompd.tensor_decompose import auto_decomposition
    except Exception as e:  # noqa: BLE001 - reported, the reference runs on
        return None, f"decompd not importable ({e})"
    if not hasattr(decompd, "calibrate"):
        return None, "decompd has no calibrate() (the calibration API is not on this branch)"
    try:
        from decompd import _engine
        _engine.library()
    except Exception as e:  # noqa: BLE001
        return None, f"libdecomp not loadable ({e}); set DECOMPD_LIBRARY"
    return (decompd, auto_decomposition), None


def decompose_decompd(api, model, names, ranks, method, calibration, info_path):
    """decompd's plain (no calibration) or whitened decomposition of the
    named layers at their ranks; returns (net, info)."""
    decompd, auto_decomposition = api
    net = copy.deepcopy(model)
    types = sorted({type(net.get_submodule(n)).__name__ for n in names})
    # The top-level rank is never used: every layer has its override.
    policy = {"name": "fixed", "rank": 1, "types": types, "methods": ["channel"],
              "include": names, "require_cheaper": False,
              "overrides": {n: {"rank": ranks[n]} for n in names}}
    kw = {"policy": policy, "decompose_info_path": info_path}
    if method == "whitened":
        kw["calibration"] = calibration
    net, changes = auto_decomposition(net, **kw)
    missing = [n for n in names if n not in changes]
    if missing:
        raise RuntimeError(f"decompd left {missing} alone")
    with open(info_path) as f:
        info = json.load(f)
    return net, info


# --- one model -----------------------------------------------------------------

def run_model(label, model, names, stats_cal, stats_held, evaluate, finetune,
              api, calib_for_decompd, ratios, cache, primary):
    """Every method at every ratio; returns rows (and prints them)."""
    mods = dict(model.named_modules())
    Ws = {n: weight_matrix(mods[n]) for n in names}
    dense_params = sum(W.numel() for W in Ws.values())
    rows = []
    t0 = time.perf_counter()
    base = evaluate(model)
    dense_ft = copy.deepcopy(model)
    finetune(dense_ft)
    base_ft = evaluate(dense_ft)
    del dense_ft
    rows.append({"model": label, "ratio": 0.0, "method": "dense", "source": "-",
                 "before": base, "after": base_ft, "params": dense_params})
    log(f"{label}: dense {fmt_metric(base)} -> fine-tuned {fmt_metric(base_ft)} "
        f"({time.perf_counter() - t0:.0f} s)")
    for x in ratios:
        ranks = {n: uniform_rank(*Ws[n].shape, x) for n in names}
        params = sum(ranks[n] * sum(Ws[n].shape) for n in names)
        for method in METHODS + DIAGNOSTIC:
            t0 = time.perf_counter()
            ref = decompose_reference(model, names, ranks, method, stats_cal)
            net, source, xcheck, reported = ref, "reference", None, None
            if api is not None and method in ("plain", "whitened"):
                info_path = os.path.join(cache, f"info-{label}-{method}-{x}.json")
                net, info = decompose_decompd(api, model, names, ranks, method,
                                              calib_for_decompd, info_path)
                source = "decompd"
                xcheck = max(float((approx_of(net, n) - approx_of(ref, n)).abs().max()) /
                             float(Ws[n].abs().max()) for n in names)
                # The same difference where it matters, in the layer's output
                # on the calibration data: ‖(W̃_d − W̃_ref)Xᵀ‖ / ‖WXᵀ‖.
                xcheck_out = max(output_error(Ws[n], Ws[n] - approx_of(net, n) +
                                              approx_of(ref, n), stats_cal[n]["gram"])
                                 for n in names)
                # And the factors themselves (same split as the reference's;
                # each rank-1 term up to its sign).
                xcheck_fac = max(factor_diff(net, ref, n) for n in names)
                by = {L["name"]: L for L in info.get("layers", [])}
                reported = {n: by.get(n, {}).get("stats", {}).get("output_relative_error")
                            for n in names}
                ref_ev = evaluate(ref)
            errs_cal = {n: output_error(Ws[n], approx_of(net, n), stats_cal[n]["gram"])
                        for n in names}
            errs_held = {n: output_error(Ws[n], approx_of(net, n), stats_held[n]["gram"])
                         for n in names}
            before = evaluate(net)
            finetune(net)
            after = evaluate(net)
            row = {"model": label, "ratio": x, "method": method, "source": source,
                   "before": before, "after": after, "params": params,
                   "ranks": ranks,
                   "out_err_cal": errs_cal, "out_err_held": errs_held,
                   "seconds": time.perf_counter() - t0}
            if xcheck is not None:
                row["xcheck_max_rel_diff"] = xcheck
                row["xcheck_output"] = xcheck_out
                row["xcheck_factors"] = xcheck_fac
                row["reference_before"] = ref_ev
                row["reported_out_err"] = reported
            rows.append(row)
            mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
            extra = ""
            if xcheck is not None:
                extra = (f" | vs reference: max|ΔW̃|/max|W| {xcheck:.2e}, output "
                         f"{xcheck_out:.1e}, factors {xcheck_fac:.1e}, "
                         f"reference {primary} {ref_ev[primary]:.4f}")
                rep = [v for v in reported.values() if v is not None]
                if rep and method == "whitened":
                    dmax = max(abs(reported[n] - errs_cal[n]) for n in names
                               if reported[n] is not None)
                    extra += f", info output_relative_error vs measured: max diff {dmax:.1e}"
            log(f"{label} {int(x * 100)}% {method:<13} [{source}] before "
                f"{fmt_metric(before)} after {fmt_metric(after)} | out err cal "
                f"{mean(errs_cal):.4f} held {mean(errs_held):.4f}{extra} "
                f"({row['seconds']:.0f} s)")
    return rows


def fmt_metric(m):
    if "ppl" in m:
        return f"ppl {m['ppl']:.4f}"
    return f"acc {100 * m['acc']:.2f}% nll {m['nll']:.4f}"


# --- report --------------------------------------------------------------------

def report(rows, model, primary):
    rs = [r for r in rows if r["model"] == model]
    dense = next(r for r in rs if r["method"] == "dense")
    ratios = sorted({r["ratio"] for r in rs if r["method"] != "dense"})
    by = {(r["ratio"], r["method"]): r for r in rs}
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731

    def m(r, when):
        v = r[when]
        return f"{v['ppl']:.3f}" if primary == "ppl" else \
            f"{100 * v['acc']:.2f}% ({v['nll']:.3f})"
    what = "perplexity per byte" if primary == "ppl" else "accuracy (cross-entropy)"
    log(f"\n{model}: held-out {what}; dense {m(dense, 'before')}, dense after "
        f"the fine-tuning epoch {m(dense, 'after')}")
    log("| fewer params | method | rank source | before fine-tuning | after 1 epoch | "
        "output error, calibration (mean / max) | output error, held-out (mean / max) |")
    log("|---|---|---|---|---|---|---|")
    for x in ratios:
        for meth in METHODS + DIAGNOSTIC:
            r = by[(x, meth)]
            log(f"| {int(round(x * 100))}% | {LABEL[meth]} | {r['source']} | {m(r, 'before')} | "
                f"{m(r, 'after')} | {mean(r['out_err_cal']):.4f} / "
                f"{max(r['out_err_cal'].values()):.4f} | {mean(r['out_err_held']):.4f} / "
                f"{max(r['out_err_held'].values()):.4f} |")
    for x in ratios:
        p, a, w = (by[(x, k)]["out_err_held"] for k in METHODS)
        log(f"{int(round(x * 100))}%: whitened's held-out output error is "
            f"{mean(w) / mean(p):.3f}x plain's (mean over layers; per layer "
            f"{min(w[n] / p[n] for n in w):.3f}-{max(w[n] / p[n] for n in w):.3f}x) "
            f"and {mean(w) / mean(a):.3f}x ASVD's")


def verdict(rows, checks):
    """Whitened best of the three at every ratio, before fine-tuning."""
    ok_all, lines = True, []
    for model, primary in checks:
        rs = [r for r in rows if r["model"] == model]
        for x in sorted({r["ratio"] for r in rs if r["method"] != "dense"}):
            by = {r["method"]: r["before"] for r in rs if r["ratio"] == x}
            w = by["whitened"]
            if primary == "ppl":
                ok = all(w["ppl"] < by[o]["ppl"] for o in ("plain", "asvd"))
            else:  # accuracy highest (ties allowed) and cross-entropy lowest
                ok = all(w["acc"] >= by[o]["acc"] and w["nll"] < by[o]["nll"]
                         for o in ("plain", "asvd"))
            ok_all &= ok
            if not ok:
                lines.append(f"  {model} at {int(round(x * 100))}%: whitened "
                             f"{fmt_metric(w)}, plain {fmt_metric(by['plain'])}, "
                             f"asvd {fmt_metric(by['asvd'])}")
    return ok_all, lines


def gaps(rows, model):
    """The 20% row against SVD-LLM's published gaps."""
    rs = [r for r in rows if r["model"] == model]
    dense = next(r for r in rs if r["method"] == "dense")["before"]["ppl"]
    at = {r["method"]: r for r in rs if abs(r["ratio"] - 0.2) < 1e-9}
    if not at:
        return
    P = PUBLISHED
    log(f"\n{model} at 20% fewer parameters, perplexity over dense (and the "
        "loss increase, nats per token) — here per byte, SVD-LLM's per LLaMA token:")
    log("| method | here: ppl / dense | here: Δ nats/byte | here after 1 epoch: ppl / dense "
        "| SVD-LLM LLaMA-7B: ppl / dense | Δ nats/token |")
    log("|---|---|---|---|---|---|")
    dense_ft = next(r for r in rs if r["method"] == "dense")["after"]["ppl"]
    for meth in METHODS:
        p = at[meth]["before"]["ppl"]
        pa = at[meth]["after"]["ppl"]
        log(f"| {meth} | {p / dense:.3f} | {math.log(p / dense):.3f} | "
            f"{pa / dense_ft:.3f} | {P[meth] / P['dense']:.3f} | "
            f"{math.log(P[meth] / P['dense']):.3f} |")
    pw, pp = at["whitened"]["before"]["ppl"], at["plain"]["before"]["ppl"]
    pa = at["asvd"]["before"]["ppl"]
    log(f"whitened closes {100 * (pp - pw) / (pp - dense):.1f}% of plain SVD's gap to "
        f"dense here (SVD-LLM: {100 * (P['plain'] - P['whitened']) / (P['plain'] - P['dense']):.2f}%) "
        f"and {100 * (pa - pw) / (pa - dense):.1f}% of ASVD's (SVD-LLM: "
        f"{100 * (P['asvd'] - P['whitened']) / (P['asvd'] - P['dense']):.1f}%)")


# --- main ----------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller models, 20%% and 40%% only, fewer tokens")
    ap.add_argument("--cache", default="/tmp/decompd-quality")
    ap.add_argument("--json", help="also write every row here")
    ap.add_argument("--speed", action="store_true",
                    help="also time whitened decomposition of 4096x4096 and "
                    "11008x4096 Linear layers (slow)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads for training, fine-tuning and evaluation "
                    "(on a loaded machine 1 can be many times faster: small ops "
                    "wait for a second thread that is not scheduled)")
    ap.add_argument("--speed-threads", type=int, default=2,
                    help="threads of both sides in --speed (torch and the engine)")
    ap.add_argument("--speed-repeat", type=int, default=2,
                    help="runs per --speed measurement, fastest kept")
    ap.add_argument("--only", choices=["lm", "digits"], help=argparse.SUPPRESS)
    ap.add_argument("--speed-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.speed_child:
        return speed_child(args)
    lazy_torch(args.threads)
    build_models()
    os.makedirs(args.cache, exist_ok=True)
    with open("/proc/loadavg") as f:
        log("load average:", " ".join(f.read().split()[:3]), "| cores:",
            os.cpu_count(), "| torch threads:", args.threads, "| torch", torch.__version__)
    api, why = decompd_api()
    if api is None:
        log(f"decompd: {why}; plain and whitened rows use the benchmark's "
            "reference implementation")
    else:
        from decompd import _engine
        log(f"decompd: {api[0].__file__}, libdecomp {_engine.library_path()}")
    ratios = [0.2, 0.4] if args.quick else RATIOS
    rows, checks = [], []

    if args.only in (None, "lm"):
        rows += bench_lm(args, api, ratios)
        checks.append(("lm", "ppl"))
    if args.only in (None, "digits"):
        rows += bench_digits(args, api, ratios)
        checks.append(("digits", "acc"))

    for model, primary in checks:
        report(rows, model, primary)
    if ("lm", "ppl") in checks:
        gaps(rows, "lm")
    ok, bad = verdict(rows, checks)
    xc = [r for r in rows if "xcheck_max_rel_diff" in r]
    if xc:
        log("\ndecompd vs the reference (worst layer, every ratio and model): "
            "max|W̃_d − W̃_ref|/max|W|; in the output on the calibration data "
            "‖(W̃_d − W̃_ref)Xᵀ‖/‖WXᵀ‖; factors max|F_d − F_ref|/max|F_ref| "
            "(sign-aligned)")
        for meth in ("plain", "whitened"):
            v = [r for r in xc if r["method"] == meth]
            if v:
                log(f"  {meth}: {max(r['xcheck_max_rel_diff'] for r in v):.2e}; output "
                    f"{max(r['xcheck_output'] for r in v):.2e}; factors "
                    f"{max(r['xcheck_factors'] for r in v):.2e}")
    speed_rows = run_speed(args) if args.speed else []
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "speed": speed_rows, "verdict": ok,
                       "decompd": why or "used"}, f, indent=1, default=float)
    log("")
    if ok:
        log("VERDICT: PASS — whitened is the best of plain / asvd / whitened at "
            "every ratio on every model, before fine-tuning")
    else:
        log("VERDICT: FAIL — whitened is not the best everywhere:")
        for line in bad:
            log(line)
    return 0 if ok else 1


def lm_hp(quick):
    if quick:
        return {"d": 128, "layers": 2, "heads": 4, "ctx": 128, "batch": 16,
                "steps": 300, "lr": 3e-3, "seed": 0}
    return {"d": 128, "layers": 4, "heads": 4, "ctx": 128, "batch": 16,
            "steps": 1200, "lr": 3e-3, "seed": 0}


def bench_lm(args, api, ratios):
    tr, held, digest, ntr, nheld = stdlib_corpus()
    log(f"lm data: {ntr} training files ({len(tr) / 1e6:.1f} MB), {nheld} held-out "
        f"({len(held) / 1e6:.2f} MB), digest {digest}")
    hp = dict(lm_hp(args.quick), data=digest)
    model = train_lm(hp, Windows(tr, hp["ctx"]), args.cache)
    model.eval()
    ev_n, cal_n, ft_n = (96, 64, 24) if args.quick else (384, 128, 64)
    held_w = Windows(held, hp["ctx"]).tiled(ev_n)
    eval_batches = list(held_w.split(32))
    g = torch.Generator().manual_seed(1234)
    train_w = Windows(tr, hp["ctx"])
    cal_batches = [train_w.random(16, g)[:, :-1] for _ in range(cal_n // 16)]
    ft_batches = [train_w.random(hp["batch"], g) for _ in range(ft_n)]
    log(f"lm: eval {held_w.numel() - len(held_w)} held-out bytes, calibration "
        f"{sum(b.numel() for b in cal_batches)} training bytes, fine-tuning epoch "
        f"{ft_n} batches x {hp['batch']} x {hp['ctx']}")
    names = target_layers(model, "blocks.")
    fwd = lambda m, b: m(b)  # noqa: E731
    stats_cal = collect_stats(model, names, cal_batches, fwd)
    stats_held = collect_stats(model, names, [b[:, :-1] for b in eval_batches], fwd)
    calib = calibrate_decompd(api, model, cal_batches, args.cache, "lm")
    return run_model("lm", model, names, stats_cal, stats_held,
                     lambda m: eval_lm(m, eval_batches),
                     lambda m: finetune_lm(m, ft_batches, 3e-4),
                     api, calib, ratios, args.cache, "ppl")


def bench_digits(args, api, ratios):
    Xtr, ytr, Xte, yte = digits_split(0)
    hp = {"epochs": 20, "batch": 32, "lr": 2e-3, "seed": 0, "n_train": len(ytr)}
    model = train_digits(hp, (Xtr, ytr), args.cache)
    log(f"digits: {len(ytr)} training images, {len(yte)} held-out")
    names = target_layers(model)
    fwd = lambda m, b: m(b)  # noqa: E731
    cal = list(Xtr[:512].split(128))
    stats_cal = collect_stats(model, names, cal, fwd)
    stats_held = collect_stats(model, names, [Xte], fwd)
    calib = calibrate_decompd(api, model, cal, args.cache, "digits")
    return run_model("digits", model, names, stats_cal, stats_held,
                     lambda m: eval_digits(m, Xte, yte),
                     lambda m: finetune_digits(m, Xtr, ytr, 5e-4, 32, 7),
                     api, calib, ratios, args.cache, "acc")


def calibrate_decompd(api, model, batches, cache, label):
    if api is None:
        return None
    decompd = api[0]
    return decompd.calibrate(model, batches, layers=target_layers(
        model, "blocks." if label == "lm" else ""))


# --- speed (--speed) -----------------------------------------------------------

SPEED_CASES = [(4096, 4096), (11008, 4096)]  # Linear weight [out, in]
SPEED_ROWS = 65536  # the synthetic Gram's sample count


def vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def speed_inputs(np, cache, out, inn):
    """W [out, in] float32 with a trained-like spectrum (random orthogonal
    factors, a power law over a noise floor) and an anisotropic Gram
    [in, in] float64 (log-normal channel scales, a rank-64 correlated part):
    G = N·D(½I + LLᵀ/64)D. Cached; returns their paths."""
    wp = os.path.join(cache, f"speed_W_{out}x{inn}.npy")
    gp = os.path.join(cache, f"speed_G_{inn}.npy")
    if not os.path.exists(wp):
        import torch as t
        g = t.Generator().manual_seed(out * 7 + inn)
        k = min(out, inn)
        q1, _ = t.linalg.qr(t.randn(out, k, generator=g))
        q2, _ = t.linalg.qr(t.randn(inn, k, generator=g))
        i = t.arange(k, dtype=t.float32)
        sig = 1.0 / (1.0 + i / (0.02 * k)) + 0.03
        W = ((q1 * sig) @ q2.T).numpy()
        np.save(wp + ".tmp.npy", W)
        os.replace(wp + ".tmp.npy", wp)
    if not os.path.exists(gp):
        rng = np.random.default_rng(inn)
        d = np.exp(0.75 * rng.standard_normal(inn))
        L = rng.standard_normal((inn, 64))
        G = 0.5 * np.eye(inn) + (L @ L.T) / 64.0
        G *= d[:, None] * d[None, :] * SPEED_ROWS
        np.save(gp + ".tmp.npy", G)
        os.replace(gp + ".tmp.npy", gp)
    return wp, gp


def write_calibration(np, path, name, G, count):
    """A decompd.calibration file for one Linear layer `name`
    (safetensors, written here: the benchmark's Gram is synthetic)."""
    gram = np.ascontiguousarray(G, dtype="<f8").tobytes()
    cnt = np.array(count, dtype="<i8").tobytes()
    layers = {name: {"gram": name, "type": "Linear", "shape": list(G.shape)}}
    hdr = {"__metadata__": {"format": "decompd.calibration", "version": "1",
                            "layers": json.dumps(layers)},
           f"{name}.count": {"dtype": "I64", "shape": [],
                             "data_offsets": [0, len(cnt)]},
           f"{name}.gram": {"dtype": "F64", "shape": list(G.shape),
                            "data_offsets": [len(cnt), len(cnt) + len(gram)]}}
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + cnt + gram)
    os.replace(path + ".tmp", path)


def speed_child(args):
    """One measurement in a process of its own; prints one JSON line."""
    job = json.loads(args.speed_child)
    import numpy as np
    lazy_torch(job["threads"])
    os.environ["DECOMPD_THREADS"] = str(job["threads"])
    W = torch.from_numpy(np.load(job["w"], mmap_mode="r+"))
    out, inn = W.shape
    R = job["rank"]
    res = {"mode": job["mode"]}
    if job["mode"].startswith("decompd"):
        sys.path.append(os.path.join(ROOT, "python"))  # PYTHONPATH first
        from decompd.tensor_decompose import auto_decomposition
        lin = torch.nn.utils.skip_init(nn.Linear, inn, out, bias=False)
        lin.weight = nn.Parameter(W, requires_grad=False)
        model = nn.Sequential()
        model.add_module("fc", lin)
        policy = {"name": "fixed", "rank": R, "types": ["Linear"],
                  "require_cheaper": False}
        kw = {"policy": policy,
              "decompose_info_path": job["factors"] + ".info.json"}
        if job["mode"] == "decompd_whitened":
            kw["calibration"] = job["cal"]
        # The engine's per-layer line (Python logging, "decompd.engine")
        # says how long the whitening and the whitened-only measurements took.
        import logging
        lines = []
        h = logging.Handler(logging.DEBUG)
        h.emit = lambda r: lines.append(r.getMessage())
        eng = logging.getLogger("decompd.engine")
        eng.addHandler(h)
        eng.setLevel(logging.DEBUG)
        base = vm("VmRSS")
        t0 = time.perf_counter()
        model, _ = auto_decomposition(model, **kw)
        res["seconds"] = time.perf_counter() - t0
        for line in lines:
            for key in ("whiten_seconds", "measure_seconds"):
                m = re.search(r"\b" + key + r"=([0-9.]+)", line)
                if m and "decomposition=" in line:
                    res[key] = float(m.group(1))
        res["peak_rss"], res["rss_before"] = vm("VmHWM"), base
        pair = model.fc
        np.save(job["factors"] + ".A.npy", pair[0].weight.detach().numpy())
        np.save(job["factors"] + ".B.npy", pair[1].weight.detach().numpy())
        with open(kw["decompose_info_path"]) as f:
            L = json.load(f)["layers"][0]
        res["rank"] = L.get("rank")
        res["info_output_error"] = L.get("stats", {}).get("output_relative_error")
        res["info_error"] = L.get("stats", {}).get("relative_error")
    else:
        G = torch.from_numpy(np.load(job["g"]))
        base = vm("VmRSS")
        t0 = time.perf_counter()
        S = torch.linalg.cholesky(G).float()  # the whitening, as a user would
        M = W @ S
        t1 = time.perf_counter()
        U, sv, Vh = torch.linalg.svd(M, full_matrices=False)
        t2 = time.perf_counter()
        r = sv[:R].sqrt()
        A = torch.linalg.solve_triangular(S, r[:, None] * Vh[:R], upper=False,
                                          left=False)
        B = U[:, :R] * r
        t3 = time.perf_counter()
        res["seconds"] = t2 - t1            # torch.linalg.svd of W·S alone
        res["pipeline_seconds"] = t3 - t0   # chol, W·S, svd, S⁻¹, factors
        res["peak_rss"], res["rss_before"] = vm("VmHWM"), base
        sv = sv.double()
        res["optimal_error"] = float((sv[R:] ** 2).sum().sqrt() / sv.norm())
        del A, B
    print(json.dumps(res))


def run_speed(args):
    """Whitened decomposition through decompd vs unwhitened (decompd) vs
    torch.linalg.svd of the same whitened matrix, each in a child."""
    import numpy as np
    api, why = decompd_api()
    log("\n--speed: Linear layers at 20% fewer parameters, "
        f"{args.speed_threads} threads, one child process per measurement")
    if api is None:
        log(f"--speed: skipped, {why}")
        return []
    torch.set_num_threads(args.speed_threads)
    rows = []
    for out, inn in SPEED_CASES:
        wp, gp = speed_inputs(np, args.cache, out, inn)
        R = uniform_rank(out, inn, 0.2)
        cal = os.path.join(args.cache, f"speed_cal_{inn}.safetensors")
        if not os.path.exists(cal):
            write_calibration(np, cal, "fc", np.load(gp), SPEED_ROWS)
        fac = os.path.join(args.cache, f"speed_factors_{out}x{inn}")
        got = {}
        for rep in range(args.speed_repeat):
            for mode in ("decompd_plain", "decompd_whitened", "torch_svd"):
                job = {"mode": mode, "w": wp, "g": gp, "cal": cal, "rank": R,
                       "threads": args.speed_threads, "factors": fac + "." + mode}
                p = subprocess.run([sys.executable, os.path.abspath(__file__),
                                    "--speed-child", json.dumps(job)],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise RuntimeError(f"{mode} {out}x{inn}: " + p.stderr.strip()[-3000:])
                r = json.loads(p.stdout.strip().splitlines()[-1])
                prev = got.get(mode)
                if prev is None or r["seconds"] < prev["seconds"]:
                    r["peak_rss"] = max(r["peak_rss"], prev["peak_rss"] if prev else 0)
                    got[mode] = r
                else:
                    prev["peak_rss"] = max(prev["peak_rss"], r["peak_rss"])
        # The whitened factors' output error, measured here from the factors.
        W = torch.from_numpy(np.load(wp)).double()
        S = torch.linalg.cholesky(torch.from_numpy(np.load(gp)))
        A = torch.from_numpy(np.load(fac + ".decompd_whitened.A.npy")).double()
        B = torch.from_numpy(np.load(fac + ".decompd_whitened.B.npy")).double()
        WS = W @ S
        err = float(torch.linalg.norm(WS - B @ (A @ S)) / torch.linalg.norm(WS))
        del W, S, A, B, WS
        own = out * inn * 4 + inn * inn * 8
        pl, wh, ts = got["decompd_plain"], got["decompd_whitened"], got["torch_svd"]
        row = {"case": f"{out}x{inn}", "rank": R, "plain_s": pl["seconds"],
               "whitened_s": wh["seconds"], "torch_svd_s": ts["seconds"],
               "torch_pipeline_s": ts["pipeline_seconds"],
               "overhead": wh["seconds"] / pl["seconds"] - 1,
               "whiten_s": wh.get("whiten_seconds"),
               "measure_s": wh.get("measure_seconds"),
               "whitened_peak_rss": wh["peak_rss"], "plain_peak_rss": pl["peak_rss"],
               "whitened_rss_before": wh["rss_before"],
               "torch_peak_rss": ts["peak_rss"], "matrix_plus_gram": own,
               "output_error": err, "optimal_error": ts["optimal_error"],
               "info_output_error": wh.get("info_output_error")}
        rows.append(row)
        own_cost = None if row["whiten_s"] is None else \
            row["whiten_s"] / pl["seconds"]
        verdict = ("not reported by this engine" if own_cost is None else
                   f"{100 * own_cost:+.0f}% of the unwhitened time: "
                   f"{'within' if own_cost <= 0.30 else 'OVER'} 30%")
        log(f"{row['case']} rank {R}: decompd whitened {wh['seconds']:.2f} s, "
            f"unwhitened {pl['seconds']:.2f} s (whitened adds "
            f"{100 * row['overhead']:+.0f}% in all; of it the whitening, "
            f"Cholesky and triangular products, {row['whiten_s']} s = "
            f"{verdict}; measuring the "
            f"output error and the weight error {row['measure_s']} s), "
            f"torch.linalg.svd of W·S {ts['seconds']:.2f} s "
            f"(x{ts['seconds'] / wh['seconds']:.1f} decompd; torch's whole "
            f"whitened pipeline {ts['pipeline_seconds']:.2f} s) | output error "
            f"{err:.4f} = {err / row['optimal_error']:.4f} x optimal (info "
            f"{row['info_output_error']}) | peak RSS {fmt_bytes(wh['peak_rss'])} "
            f"({fmt_bytes(wh['peak_rss'] - wh['rss_before'])} above the start; "
            f"matrix + Gram {fmt_bytes(own)}; unwhitened {fmt_bytes(pl['peak_rss'])}, "
            f"torch {fmt_bytes(ts['peak_rss'])})")
    return rows


def fmt_bytes(b):
    return "%.2f GB" % (b / 2**30) if b >= 2**30 else "%.0f MB" % (b / 2**20)


if __name__ == "__main__":
    sys.exit(main())
