"""The distributed pattern: rank 0 decomposes and saves the info file and the
state dict, rank 1 (another process) runs decompose_network and loads them;
both end bit-exact — checked before DDP (whose construction would broadcast
rank 0's parameters and hide a difference), then after one DDP step."""

import socket
import subprocess
import sys
import os

from tensor_decompose_common import HERE, SOURCE_DIR

RANK = r"""
import hashlib, os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from decompd.tensor_decompose import auto_decomposition, decompose_network
from tensor_decompose_common import Net

work = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
info, weights = os.path.join(work, "info.json"), os.path.join(work, "w.pth")

torch.manual_seed(100 + rank)                # every rank starts different
net = Net()
if rank == 0:
    net, changes = auto_decomposition(model=net, decompose_info_path=info)
    torch.save(net.state_dict(), weights)
dist.barrier()
if rank != 0:
    net, changes = decompose_network(model=net, decompose_info_path=info)
    net.load_state_dict(torch.load(weights), strict=True)

def digest(model, buffers=True):
    h = hashlib.sha256()
    items = model.state_dict() if buffers else dict(model.named_parameters())
    for k, v in items.items():
        h.update(k.encode()); h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()

def same_everywhere(model, buffers=True):
    mine = digest(model, buffers)
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return all(d == mine for d in every)

assert changes, "nothing decomposed"
assert same_everywhere(net), "ranks differ after decompose + load"
ddp = DDP(net)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
torch.manual_seed(7 + rank)
x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
torch.nn.functional.cross_entropy(ddp(x), y).backward()
opt.step()
# BatchNorm running stats follow each rank's own batch: parameters only.
assert same_everywhere(net, buffers=False), "ranks differ after a DDP step"
print(f"rank {rank}: ok, {len(changes)} convs, {digest(net, False)[:16]}")
dist.destroy_process_group()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_decompose_on_one_rank_load_on_another(tmp_path):
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   RANK=str(rank), WORLD_SIZE="2", OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(SOURCE_DIR, "python"), HERE]
            + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
               else []))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", RANK, str(tmp_path)], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out, err))
    for rank, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"rank {rank} failed:\n{out}\n{err}"
        print(out.strip())
    digests = {out.split()[-1] for _, out, _ in outs}
    assert len(digests) == 1
