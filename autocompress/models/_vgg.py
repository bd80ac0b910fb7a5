"""VGG-11 with batch norm, torchvision's names (``features.N``, ``classifier.N``)."""
from __future__ import annotations

import torch
from torch import nn

_CFG_A = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", in_channels: int = 3,
                 width_mult: float = 1.0, dropout: float = 0.5):
        super().__init__()
        self.stem = stem
        layers: list[nn.Module] = []
        c = in_channels
        for v in _CFG_A:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                w = max(8, int(round(v * width_mult)))
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
        self.features = nn.Sequential(*layers)
        # torchvision pools to 7x7 for 224 px input; small inputs pool to 1x1 (the CIFAR variant)
        pool = 7 if stem == "imagenet" else 1
        hidden = 4096 if stem == "imagenet" else 512
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(c * pool * pool, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg11_bn(**kw) -> VGG:
    return VGG(**kw)
