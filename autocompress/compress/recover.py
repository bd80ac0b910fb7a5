"""Getting accuracy back after compression, and the training loop the baseline also uses.

Batch-norm re-estimation is almost free and repairs most of the damage pruning does to the
running statistics; fine-tuning with distillation from the uncompressed model does the rest.

The teacher's logits can come from a cache instead of a teacher forward at every step: computed
once per process for a fixed pool of training images (and their horizontal flips, where the data
is augmented) and shared by every candidate's fine-tuning; a pruned student's training step then
costs its own forward and backward only.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

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


@dataclass
class TeacherLogits:
    """The teacher's float32 eval-mode logits for a pool of training images."""

    index: torch.Tensor  # pool position -> training-set index
    logits: torch.Tensor  # pool size x classes
    flipped: torch.Tensor | None  # the same for each image flipped horizontally; None without flips


_TEACHER_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _param_checksum(model: nn.Module) -> float:
    # cheap guard against a teacher whose weights changed in place since its logits were cached
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def teacher_logits(teacher: nn.Module, data: DataBundle, size: int, *, flips: bool,
                   batch_size: int = 256) -> TeacherLogits:
    """The teacher's logits for the first ``size`` images of a fixed shuffle of the training set,
    cached per process (by teacher object, data fingerprint and flips) and grown on demand: a
    larger request computes only the images missing, a smaller one reuses a prefix."""
    size = min(size, len(data.train_y))
    per_teacher = _TEACHER_CACHE.setdefault(teacher, {})
    key = (data.fingerprint, flips)
    entry = per_teacher.get(key)
    checksum = _param_checksum(teacher)
    if entry is not None and entry["checksum"] != checksum:
        entry = None
    if entry is None:
        order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
        entry = {"checksum": checksum, "order": order, "logits": [], "flipped": [], "n": 0}
        per_teacher[key] = entry
    if entry["n"] < size:
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            for i in range(entry["n"], size, batch_size):
                xb = data.train_x[entry["order"][i:min(i + batch_size, size)]]
                entry["logits"].append(teacher(xb).float())
                if flips:
                    entry["flipped"].append(teacher(xb.flip(-1)).float())
        teacher.train(was_training)
        entry["logits"] = [torch.cat(entry["logits"])]
        entry["flipped"] = [torch.cat(entry["flipped"])] if flips else []
        entry["n"] = size
    return TeacherLogits(entry["order"][:size], entry["logits"][0][:size],
                         entry["flipped"][0][:size] if flips else None)


def _pool_batches(pool: TeacherLogits, data: DataBundle, batch_size: int, g: torch.Generator):
    """Endless shuffled batches of the pool (cycling when the steps ask for more), each image
    flipped at random where the pool has flips: (images, labels, teacher logits)."""
    n = len(pool.index)
    while True:
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            pos = order[i:i + batch_size]
            idx = pool.index[pos]
            xb, yb, tb = data.train_x[idx], data.train_y[idx], pool.logits[pos]
            if pool.flipped is not None:
                flip = torch.rand(len(pos), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                tb = torch.where(flip[:, None], pool.flipped[pos], tb)
            yield xb, yb, tb


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits_: torch.Tensor | None,
                      temperature: float = 4.0, kd_weight: float = 0.9) -> torch.Tensor:
    """Cross-entropy, mixed with the temperature-scaled KL divergence to the teacher when given."""
    loss = F.cross_entropy(logits.float(), labels)
    if teacher_logits_ is None:
        return loss
    kd = F.kl_div(F.log_softmax(logits.float() / temperature, 1),
                  F.softmax(teacher_logits_.float() / temperature, 1), reduction="batchmean")
    return (1 - kd_weight) * loss + kd_weight * kd * temperature ** 2


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
          seed: int = 0, bf16: bool | None = None, weight_decay: float = 5e-4, progress=None,
          teacher_cache: bool = False, teacher_pool: int = 4096) -> None:
    """SGD (Nesterov, one-cycle) for ``steps`` steps; distils from ``teacher`` when given.

    ``teacher_cache``: train on a pool of min(steps x batch, ``teacher_pool``) training images
    whose teacher logits :func:`teacher_logits` caches (random horizontal flips where the data is
    augmented, no random crop) instead of running the teacher at every step.
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
    # one cycle needs a few steps to have phases (at 4 its warm-up is one step and it divides by
    # zero): a constant rate below 5
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25) if steps >= 5
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    model.train()
    if teacher is not None:
        teacher.eval()
    if teacher is not None and teacher_cache:
        pool = teacher_logits(teacher, data, min(steps * batch_size, teacher_pool), flips=data.augment)
        stream = _pool_batches(pool, data, batch_size, g)
    else:
        stream = _live_batches(data, batch_size, g)
    for step, (xb, yb, t_logits) in enumerate(stream, start=1):
        with _autocast(bf16):
            logits = model(xb)
            if teacher is not None and t_logits is None:
                with torch.no_grad():
                    t_logits = teacher(xb).float()
            loss = distillation_loss(logits, yb, t_logits if teacher is not None else None,
                                     temperature, kd_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step, steps, float(loss.detach()))
        if step >= steps:
            break
    if bf16:
        model.to(memory_format=torch.contiguous_format)
    model.eval()


def _live_batches(data: DataBundle, batch_size: int, g: torch.Generator):
    """Endless shuffled epochs of the training set, augmented where the data says so."""
    while True:
        for xb, yb in batches(data.train_x, data.train_y, batch_size, shuffle=True, generator=g):
            yield (_augment(xb, g) if data.augment else xb), yb, None


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits for ``x`` in float32 (eval mode, no autocast: what the numbers are reported on)."""
    from autocompress.data import chunks

    model.eval()
    return torch.cat([model(xb) for xb in chunks(x, batch_size)])
