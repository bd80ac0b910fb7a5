"""Small user models for tests: branches, concatenation, a residual add, a depthwise conv."""
import torch
from torch import nn


class BranchyNet(nn.Module):
    """Two parallel branches concatenated, a residual add and a depthwise conv."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.left = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.project = nn.Conv2d(24, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.cat([self.left(x), self.right(x)], dim=1)
        y = self.bn2(self.project(self.dw(y)))
        x = torch.relu(x + y)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_resnet(num_classes: int = 10):
    from autocompress.models import resnet18
    return resnet18(num_classes=num_classes, stem="cifar", width_mult=0.125)


class BrokenNet(nn.Module):
    """Its forward pass fails on any input (a user bug autocompress must report in one line)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, 999))


class HardcodedWidthNet(nn.Module):
    """Works as built, but hard-codes a channel count, so pruning that layer breaks the forward
    pass: a trial that raises, which the search must record as failed and carry on."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = x.mean(dim=(2, 3))
        return self.fc(x.reshape(x.shape[0], 16))
