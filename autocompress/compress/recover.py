"""Getting accuracy back after compression, and the training loop the baseline also uses.

Batch-norm re-estimation is almost free and repairs most of the damage pruning does to the
running statistics; fine-tuning with distillation from the uncompressed model does the rest.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.data import DataBundle, batches
from autocompress.utils import bf16_is_fast


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (pad 4) and horizontal flip, the usual CIFAR recipe, on a batch."""
    if x.dim() != 4 or x.shape[-1] < 16:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2,), generator=g).tolist()
    x = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def recalibrate_batchnorm(model: nn.Module, data: DataBundle, *, batches_: int = 20,
                          batch_size: int = 128, seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running statistics on training data (cumulative mean)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (xb, _) in enumerate(batches(data.train_x, data.train_y, batch_size, shuffle=True, generator=g)):
            if i >= batches_:
                break
            model(xb)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    model.eval()


def train(model: nn.Module, data: DataBundle, *, steps: int, lr: float, batch_size: int = 128,
          teacher: nn.Module | None = None, temperature: float = 4.0, kd_weight: float = 0.9,
          seed: int = 0, bf16: bool | None = None, weight_decay: float = 5e-4, progress=None) -> None:
    """SGD (Nesterov, one-cycle) for ``steps`` steps; distils from ``teacher`` when given.

    ``bf16`` None: bf16 autocast with channels_last where the CPU computes bf16 natively."""
    if steps <= 0:
        return
    if bf16 is None:
        bf16 = bf16_is_fast()
    if bf16:
        model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    model.train()
    if teacher is not None:
        teacher.eval()
    step = 0
    while step < steps:
        for xb, yb in batches(data.train_x, data.train_y, batch_size, shuffle=True, generator=g):
            if data.augment:
                xb = _augment(xb, g)
            with _autocast(bf16):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(xb).float()
                    kd = F.kl_div(F.log_softmax(logits.float() / temperature, 1),
                                  F.softmax(t_logits / temperature, 1), reduction="batchmean")
                    loss = (1 - kd_weight) * loss + kd_weight * kd * temperature ** 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(step, steps, float(loss))
            if step >= steps:
                break
    if bf16:
        model.to(memory_format=torch.contiguous_format)
    model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for ``x`` in float32 (eval mode, no autocast: what the numbers are reported on)."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
