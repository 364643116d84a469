#!/usr/bin/python3
"""Checkpoints bigger than memory: decompose a LLaMA-shaped sharded
safetensors checkpoint with decompctl and report wall time and peak RSS.

    /usr/bin/python3 bench/bench_sharded.py            # 1B shapes (quick)
    /usr/bin/python3 bench/bench_sharded.py --shape 7b # LLaMA-7B shapes

Synthesizes the checkpoint the way the Hub lays it out
(model-0000i-of-0000N.safetensors + model.safetensors.index.json, fp16,
HF tensor names): `--shape 7b` is LLaMA-7B (32 blocks, d 4096, MLP 11008,
vocab 32000; 13.5 GB, in shards of 10 GB as meta-llama/Llama-2-7b-hf has
them), `--shape 1b` TinyLlama-1.1B's (22 blocks, d 2048, MLP 5632, k/v 256,
vocab 32000; 2.2 GB, in 1 GB shards so that the quick run reads several).
Each block Linear has a trained-like spectrum: W = (A · diag(σ)) · B with
Gaussian A, B and σ_i = (1 + i)^-0.6 (a power law, as measured on trained
LLM weights), scaled to unit RMS. The checkpoint is written one tensor at a
time (the script's own memory stays at one tensor).

With them, a synthetic calibration (decompd.calibration, float32 Grams:
float64 ones would be 43 GB at LLaMA-7B's shapes): one Gram per distinct
input, as calibrate() shares them — the block's input for q/k/v, o_proj's,
the MLP's input for gate/up, down_proj's (11008²) — each trained-like
(lognormal channel scales with a few outlier channels, correlations of
power-law strength, a floor). `--no-calibration` for the weight-only run,
`--blocks N` for fewer blocks at the same sizes.

decompctl then decomposes the block Linears (the spec lists them; the
embedding, norms and lm_head pass through) at 20% fewer parameters
(policy budget, params_reduction 1.25, types ["Linear"]), whitened by the
calibration, with `--threads 2` (the layers side by side), into sharded
output. Reported: wall time, the child's peak RSS (wait4 of a process
forked from a small launcher, so pytest's or this script's memory is not
counted) and the engine's own peak_rss_bytes, against the checkpoint's
size; the load average before and after (the machine may be shared); and,
for scale, the full-SVD estimate (a gesdd of every LLaMA-7B block matrix:
about 2.4 h on 2 cores here, scaled by Σ m·n·min(m,n) for other shapes)
and SVD-LLM's reported 90–100 GB of host memory for LLaMA-7B.

Not in CI: the 7B run needs ~13.5 GB for the input, ~22 GB for the
calibration and ~11 GB of output (checked with shutil.disk_usage before
anything is written).
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)

SHAPES = {
    # blocks, d, mlp, kv (k/v proj out), vocab, input shard bytes
    "7b": dict(blocks=32, d=4096, mlp=11008, kv=4096, vocab=32000,
               shard=10_000_000_000),
    "1b": dict(blocks=22, d=2048, mlp=5632, kv=256, vocab=32000,
               shard=1_000_000_000),
}
FULL_SVD_7B_SECONDS = 2.4 * 3600  # DESIGN: gesdd of every LLaMA-7B matrix


def tensors_of(s):
    """[(name, shape, kind)] in the Hub's order; kind: linear/embed/norm."""
    d, m, kv = s["d"], s["mlp"], s["kv"]
    out = [("model.embed_tokens.weight", (s["vocab"], d), "embed")]
    for b in range(s["blocks"]):
        p = f"model.layers.{b}."
        out += [(p + "self_attn.q_proj.weight", (d, d), "linear"),
                (p + "self_attn.k_proj.weight", (kv, d), "linear"),
                (p + "self_attn.v_proj.weight", (kv, d), "linear"),
                (p + "self_attn.o_proj.weight", (d, d), "linear"),
                (p + "mlp.gate_proj.weight", (m, d), "linear"),
                (p + "mlp.up_proj.weight", (m, d), "linear"),
                (p + "mlp.down_proj.weight", (d, m), "linear"),
                (p + "input_layernorm.weight", (d,), "norm"),
                (p + "post_attention_layernorm.weight", (d,), "norm")]
    out += [("model.norm.weight", (d,), "norm"),
            ("lm_head.weight", (s["vocab"], d), "embed")]
    return out


def make(shape, kind, gen):
    if kind == "norm":
        return torch.ones(shape, dtype=torch.float16)
    if kind == "embed":
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.float16)
    rows, cols = shape
    k = min(rows, cols)
    sigma = (1.0 + torch.arange(k, dtype=torch.float32)) ** -0.6
    a = torch.randn(rows, k, generator=gen) * sigma
    w = a @ torch.randn(k, cols, generator=gen)
    w *= 1.0 / float(w.pow(2).mean().sqrt())
    return (w * 0.02).to(torch.float16)


def gram_keys(s):
    """[(key, n, [layers])]: one Gram per distinct input, as the
    calibration file shares them (q/k/v read the block's input, gate/up the
    MLP's)."""
    d, m = s["d"], s["mlp"]
    out = []
    for b in range(s["blocks"]):
        p = f"model.layers.{b}."
        out += [(p + "attn_in", d, [p + "self_attn." + x + "_proj"
                                    for x in "qkv"]),
                (p + "o_in", d, [p + "self_attn.o_proj"]),
                (p + "mlp_in", d, [p + "mlp.gate_proj", p + "mlp.up_proj"]),
                (p + "down_in", m, [p + "mlp.down_proj"])]
    return out


def make_gram(n, gen):
    """A trained-like input Gram (float32, n×n): per-channel scales with a
    few outlier channels (as LLM activations have), correlations of
    decaying strength (a power-law spectrum over 256 directions) and a
    floor, G = D·(U·diag(λ)·Uᵀ + 0.05·I)·D, positive definite."""
    r = min(n, 256)
    scale = torch.exp(0.5 * torch.randn(n, generator=gen))
    scale[torch.randperm(n, generator=gen)[:max(1, n // 500)]] *= 20
    u = torch.randn(n, r, generator=gen) / r ** 0.5
    u *= (1.0 + torch.arange(r, dtype=torch.float32)) ** -0.5
    g = u @ u.T
    g.diagonal().add_(0.05)
    g *= scale[:, None]
    g *= scale[None, :]
    return g


def write_calibration(path, s, seed=1, samples=262144):
    """decompd's calibration file (float32 Grams: a float64 one of every
    LLaMA-7B input would be 43 GB), one Gram in memory at a time."""
    keys = gram_keys(s)
    layers, header, pos = {}, {}, 0
    for key, n, names in keys:
        for name in names:
            layers[name] = {"gram": key, "type": "Linear", "shape": [n, n]}
    header["__metadata__"] = {"format": "decompd.calibration",
                              "version": "1",
                              "layers": json.dumps(layers)}
    for key, n, _ in keys:
        header[key + ".count"] = {"dtype": "I64", "shape": [],
                                  "data_offsets": [pos, pos + 8]}
        pos += 8
    for key, n, _ in keys:
        header[key + ".gram"] = {"dtype": "F32", "shape": [n, n],
                                 "data_offsets": [pos, pos + 4 * n * n]}
        pos += 4 * n * n
    h = json.dumps(header).encode()
    h += b" " * (-(8 + len(h)) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.write(struct.pack("<q", samples) * len(keys))
        for key, n, _ in keys:
            f.write(make_gram(n, gen).numpy().tobytes())
    return 8 + len(h) + pos


def write_checkpoint(folder, s, seed=0):
    """The sharded checkpoint, one tensor in memory at a time."""
    os.makedirs(folder, exist_ok=True)
    ts = tensors_of(s)
    nbytes = [2 * int(np.prod(shape)) for _, shape, _ in ts]
    shards, cur, fill = [], [], 0
    for i, b in enumerate(nbytes):
        if cur and fill + b > s["shard"]:
            shards.append(cur)
            cur, fill = [], 0
        cur.append(i)
        fill += b
    shards.append(cur)
    gen = torch.Generator().manual_seed(seed)
    wmap = {}
    for si, idx in enumerate(shards):
        name = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        header, pos = {"__metadata__": {"format": "pt"}}, 0
        for i in idx:
            header[ts[i][0]] = {"dtype": "F16", "shape": list(ts[i][1]),
                                "data_offsets": [pos, pos + nbytes[i]]}
            pos += nbytes[i]
            wmap[ts[i][0]] = name
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            for i in idx:
                f.write(make(ts[i][1], ts[i][2], gen).numpy().tobytes())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(nbytes)},
                   "weight_map": wmap}, f, indent=2)
    spec = {"layers": [{"name": n[:-len(".weight")], "type": "Linear",
                        "in_features": shape[1], "out_features": shape[0],
                        "bias": False}
                       for n, shape, kind in ts if kind == "linear"]}
    return sum(nbytes), spec, len(shards)


NP_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64,
             "I64": np.int64}


def st_tensor(path, name):
    """One tensor of a safetensors file, mapped (numpy, no copy)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))[name]
    a, b = h["data_offsets"]
    return np.memmap(path, dtype=NP_DTYPES[h["dtype"]], mode="r",
                     offset=8 + n + a,
                     shape=tuple(h["shape"]) or (1,))


def sharded_tensor(folder, name):
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        shard = json.load(f)["weight_map"][name]
    return st_tensor(os.path.join(folder, shard), name)


def check_layer(ckpt, out, cal_path, info, layer, gram_key):
    """The info file's output error of `layer`, recomputed independently in
    numpy (float64) from the files: the original weight W (input shard),
    its two factors as written (output shards) and the calibration's Gram
    G: ‖(W − W₁W₀)·S‖/‖W·S‖ with S·Sᵀ = G, i.e. the square root of
    tr(D·G·Dᵀ)/tr(W·G·Wᵀ), D = W − W₁W₀."""
    w = sharded_tensor(ckpt, layer + ".weight").astype(np.float64)
    w0 = sharded_tensor(out, layer + ".0.weight").astype(np.float64)
    w1 = sharded_tensor(out, layer + ".1.weight").astype(np.float64)
    g = st_tensor(cal_path, gram_key + ".gram").astype(np.float64)
    d = w - w1 @ w0
    num = float(np.einsum("ij,ij->", d @ g, d))
    den = float(np.einsum("ij,ij->", w @ g, w))
    mine = (num / den) ** 0.5
    theirs = next(lay["stats"]["output_relative_error"]
                  for lay in info["layers"] if lay["name"] == layer)
    return mine, theirs


LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
sys.stderr.write("\\nmaxrss_kb=%d\\n" % ru.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def gib(b):
    return b / 2**30


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--dir", default="/tmp/decompd-bench-sharded")
    ap.add_argument("--decompctl",
                    default=os.path.join(TOP, "build-test/src/cli/decompctl"))
    ap.add_argument("--blas-threads", type=int, default=0,
                    help="OPENBLAS_NUM_THREADS for decompctl (0: as set); "
                         "1 avoids OpenBLAS's spinning on a loaded machine")
    ap.add_argument("--keep", action="store_true",
                    help="keep the checkpoint and output")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse a checkpoint (and calibration) already in "
                         "--dir")
    ap.add_argument("--blocks", type=int, default=0,
                    help="this many blocks instead of the shape's (a "
                         "quicker run at the same layer sizes)")
    ap.add_argument("--no-calibration", action="store_true",
                    help="weight-only SVD (no synthetic calibration Grams, "
                         "no whitening)")
    ap.add_argument("--threads", type=int, default=2,
                    help="decompctl --threads (cores the engine may use; "
                         "0: one layer at a time, OpenBLAS as set)")
    ap.add_argument("--log", metavar="FILE",
                    help="decompctl --verbose's engine log, each line "
                         "prefixed with the seconds since the start")
    args = ap.parse_args()
    s = dict(SHAPES[args.shape])
    tag = args.shape
    if args.blocks:
        s["blocks"] = args.blocks
        tag += f"-{args.blocks}blocks"
    calibrated = not args.no_calibration
    top = os.path.join(args.dir, tag)
    ckpt = os.path.join(top, "ckpt")
    out = os.path.join(top, "out")
    cal_path = os.path.join(top, "calibration.safetensors")
    size = sum(2 * int(np.prod(sh)) for _, sh, _ in tensors_of(s))
    cal_size = 4 * sum(n * n for _, n, _ in gram_keys(s)) if calibrated else 0
    free = shutil.disk_usage(os.path.dirname(args.dir) or "/").free
    if not args.reuse and free < 2.2 * size + cal_size:
        sys.exit(f"needs {gib(2.2 * size + cal_size):.1f} GiB free for "
                 f"input, calibration and output, {gib(free):.1f} GiB free")
    t0 = time.monotonic()
    spec_path = os.path.join(top, "spec.json")
    if args.reuse and os.path.exists(spec_path):
        nshards = len([f for f in os.listdir(ckpt) if f.startswith("model-")])
    else:
        shutil.rmtree(top, ignore_errors=True)
        size, spec, nshards = write_checkpoint(ckpt, s)
        with open(spec_path, "w") as f:
            json.dump(spec, f)
    print(f"checkpoint: {tag} shapes, {gib(size):.2f} GiB in {nshards} "
          f"shards ({time.monotonic() - t0:.0f} s to write)", flush=True)
    if calibrated:
        t0 = time.monotonic()
        if not (args.reuse and os.path.exists(cal_path)):
            write_calibration(cal_path, s)
        print(f"calibration: {len(gram_keys(s))} float32 Grams, "
              f"{gib(os.path.getsize(cal_path)):.2f} GiB "
              f"({time.monotonic() - t0:.0f} s to write)", flush=True)

    shutil.rmtree(out, ignore_errors=True)
    policy = {"name": "budget", "params_reduction": 1.25, "types": ["Linear"]}
    env = dict(os.environ)
    if args.blas_threads:
        env["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    cmd = ["/usr/bin/python3", "-c", LAUNCH, args.decompctl, "decompose",
           "--weights", ckpt, "--spec", spec_path, "--out", out,
           "--policy", json.dumps(policy), "--threads", str(args.threads),
           "--quiet", "--json"]
    if calibrated:
        cmd += ["--calibration", cal_path]
    if args.log:
        cmd += ["--verbose"]
    load0 = os.getloadavg()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    lines = []
    log = open(args.log, "w") if args.log else None
    for line in p.stderr:
        lines.append(line)
        if log:
            log.write(f"{time.monotonic() - t0:9.2f} {line}")
            log.flush()
    p.stdout.read()
    p.wait()
    if log:
        log.close()
    wall = time.monotonic() - t0
    load1 = os.getloadavg()
    err, _, tail = "".join(lines).rpartition("\nmaxrss_kb=")
    if p.returncode != 0:
        sys.exit(f"decompctl failed ({p.returncode}): {err}")
    peak = int(tail) * 1024
    with open(os.path.join(out, "decompose_info.json")) as f:
        info = json.load(f)
    summary = info["summary"]
    kinds = {}
    for lay in info["layers"]:
        kind = lay["name"].rsplit(".", 1)[-1]
        kinds[kind] = kinds.get(kind, 0) + 1
    out_err = [lay["stats"].get("output_relative_error")
               for lay in info["layers"]]
    out_err = [e for e in out_err if e is not None]
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        out_size = json.load(f)["metadata"]["total_size"]
    flops = sum(sh[0] * sh[1] * min(sh) for _, sh, k in tensors_of(s)
                if k == "linear")
    flops7 = sum(sh[0] * sh[1] * min(sh)
                 for _, sh, k in tensors_of(SHAPES["7b"]) if k == "linear")
    full = FULL_SVD_7B_SECONDS * flops / flops7
    print(f"decomposed {summary['layers_decomposed']} Linear layers, params "
          f"{summary['params_before'] / 1e6:.0f}M -> "
          f"{summary['params_after'] / 1e6:.0f}M "
          f"({summary['params_before'] / summary['params_after']:.3f}x "
          f"fewer); output {gib(out_size):.2f} GiB")
    print("decomposed by kind: " + ", ".join(
        f"{k} {v}" for k, v in sorted(kinds.items())))
    if out_err:
        print(f"output relative error (whitened, on the calibration's "
              f"inputs): median {float(np.median(out_err)):.4f}, worst "
              f"{max(out_err):.4f}; weight relative error worst "
              f"{summary['worst_relative_error']:.4f}")
    if out_err:
        layer = info["layers"][0]["name"]
        key = next(k for k, _, names in gram_keys(s) if layer in names)
        mine, theirs = check_layer(ckpt, out, cal_path, info, layer, key)
        print(f"{layer}: output relative error recomputed in numpy from the "
              f"files {mine:.6f}, the info file's {theirs:.6f}")
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min); full-SVD estimate "
          f"{full / 60:.0f} min: {full / wall:.1f}x")
    print(f"peak RSS {peak / 2**20:.0f} MiB (engine's own: "
          f"{summary['peak_rss_bytes'] / 2**20:.0f} MiB) = "
          f"{peak / size:.3f} x the checkpoint ({gib(size):.2f} GiB); "
          f"SVD-LLM reports 90-100 GB for LLaMA-7B")
    print(f"OPENBLAS_NUM_THREADS={env.get('OPENBLAS_NUM_THREADS', '(unset)')}; "
          f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} (2 cores)")
    if not args.keep:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
