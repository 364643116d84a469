"""TorchScript modules whose loading misbehaves (torch.jit.load runs their
__setstate__): shared by the intake's own tests (tests/torchscript) and the
daemon's (tests/integration/test_torchscript.py)."""
from typing import List, Tuple

import torch
import torch.nn as nn


class Spin(nn.Module):
    """Loops forever in __setstate__, which torch.jit.load runs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.n = 1

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, bool]:
        return (self.n, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, bool]) -> None:
        self.n = state[0]
        self.training = state[1]
        i = 0
        while self.n > 0:
            i += 1

    def forward(self, x):
        return self.conv(x)


class Hog(nn.Module):
    """Allocates without bound in __setstate__."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.n = 1
        self.keep = [torch.zeros(1)]

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, bool]:
        return (self.n, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, bool]) -> None:
        self.n = state[0]
        self.training = state[1]
        keep: List[torch.Tensor] = [torch.zeros(1)]
        while self.n > 0:
            keep.append(torch.ones(1 << 27))  # 512 MiB a step, touched
            self.n = len(keep)
        self.keep = keep

    def forward(self, x):
        return self.conv(x)
