"""Your own model: any nn.Module (here one with parallel branches, a concatenation, a depthwise
conv and a residual add), trained by your own loop on your own Datasets, then searched.

    python examples/custom_model.py --trials 16

autocompress traces the model once, finds which channels must be pruned together (the two
branches feeding the concatenation, the depthwise conv and its producer, the residual add) and
keeps the pruned model consistent.
"""
import argparse
import json
import os

import torch
from torch import nn
from torch.utils.data import TensorDataset

import autocompress


class TwoBranchNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.wide = nn.Sequential(nn.Conv2d(32, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.narrow = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(48, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.wide(x), self.narrow(x)], dim=1)   # branches meet in a concatenation
        x = torch.relu(x + self.project(self.depthwise(y)))    # and rejoin the trunk in a residual add
        return self.head(x.mean(dim=(2, 3)))


def digits_datasets():
    """scikit-learn's 8x8 digits as your own torch Datasets (1 channel, values in [0, 1])."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return TensorDataset(xtr, ytr), TensorDataset(xva, yva)


def train(model, data, epochs: int) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=int(os.environ.get("AUTOCOMPRESS_EXAMPLE_TRIALS", 16)))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--val-samples", type=int, default=None)
    ap.add_argument("--max-acc-drop", type=float, default=1.0)
    ap.add_argument("--target", default="tpu-v1")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default="runs/custom-model")
    args = ap.parse_args()

    train_ds, val_ds = digits_datasets()
    model = TwoBranchNet()
    train(model, train_ds, args.epochs)

    result = autocompress.search(model, train_ds, val_ds, target=args.target, trials=args.trials,
                                 constraints={"max_acc_drop": args.max_acc_drop}, val_samples=args.val_samples,
                                 workers=args.workers, out=args.out)
    print(f"uncompressed accuracy {100 * result.baseline['accuracy']:.2f}%")
    best = result.best()
    small = result.apply(model, best)   # a real, smaller nn.Module of the same class structure
    x = torch.zeros(1, 1, 8, 8)
    assert small(x).shape == model(x).shape
    layers = result.export(best, "csv", os.path.join(args.out, "best_layers.csv"))
    print(open(layers).read())
    print("RESULT " + json.dumps({"run_dir": str(result.run_dir), "trial": int(best["trial"]),
                                  "energy_reduction": float(best["energy_reduction"]),
                                  "params": sum(p.numel() for p in small.parameters()),
                                  "params_uncompressed": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
