"""Fine-tuning recovers accuracy: a small CNN trained on scikit-learn's digits
(8x8 images) to >= 95% test accuracy, decomposed with the default policy,
fine-tuned for at most 3 epochs, ends within 1 point of the original. The
same with a harsher 6x budget, where the decomposition costs accuracy and
fine-tuning has something to recover."""

import copy
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from decompd.tensor_decompose import auto_decomposition


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, padding=1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = nn.functional.max_pool2d(x, 2)          # 8x8 -> 4x4
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        return self.fc(x.mean((2, 3)))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n = int(0.8 * len(y))
    return (x[:n], y[:n]), (x[n:], y[n:])


def train(net, data, epochs, lr):
    x, y = data
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 32):
            idx = perm[i:i + 32]
            optimizer.zero_grad()
            criterion(net(x[idx]), y[idx]).backward()
            optimizer.step()


def accuracy(net, data):
    x, y = data
    net.eval()
    with torch.no_grad():
        return 100.0 * (net(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def trained():
    seed_everything(0)
    train_set, test_set = digits()
    net = DigitsNet()
    train(net, train_set, epochs=12, lr=2e-3)
    original = accuracy(net, test_set)
    print(f"original accuracy: {original:.2f}%")
    assert original >= 95.0
    return net, original, train_set, test_set


@pytest.mark.parametrize("policy", [None, {"name": "budget",
                                           "macs_reduction": 6.0}],
                         ids=["default", "budget-6x"])
def test_fine_tuning_recovers_accuracy(trained, policy):
    net, original, train_set, test_set = trained
    net = copy.deepcopy(net)
    seed_everything(1)
    # policy None is the default (budget, 2x conv MACs); the example input
    # lets it weigh the layers by their real MACs (8x8 and 4x4 maps).
    net, changes = auto_decomposition(model=net, policy=policy,
                                      example_input=train_set[0][:1])
    assert len(changes) >= 2
    decomposed = accuracy(net, test_set)
    best = decomposed
    for epoch in range(3):
        if best >= original - 1.0 and epoch > 0:
            break
        train(net, train_set, epochs=1, lr=5e-4)
        best = accuracy(net, test_set)
        print(f"fine-tuning epoch {epoch + 1}: {best:.2f}%")
    print(f"digits, policy {policy or 'default'}: original {original:.2f}%, "
          f"decomposed {decomposed:.2f}% ({', '.join(changes)}), after "
          f"fine-tuning {best:.2f}%")
    assert best >= original - 1.0
