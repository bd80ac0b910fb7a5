"""Sensitivity analysis: what each value of each searchable param does on its own.

For every searchable :class:`~autocompress.space.Param` and every value of it, the candidate
with that value and every other param at its least-compressing value is built at the screening
fidelity (no fine-tuning) and run on a fixed calibration subset of the validation data. Its
damage is recorded twice: as the accuracy drop against the uncompressed model, and as the KL
divergence of its logits from the uncompressed model's. The KL is the smooth proxy: on 256
images one image is 0.4 points of accuracy, while the KL moves with every logit.

The least-compressing candidate itself (the ``reference`` row: on an integer-only target it is
already quantised to the reference precision) is built once and stands for every param's least
value. The table is cached as JSON under ``cache_dir("sensitivity")``, keyed by everything that
changes it, so a later search of the same model, data, space and target reuses it.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from autocompress.space import BoundSpace, Param
from autocompress.utils import atomic_write_json, cache_dir

__all__ = ["Sensitivity", "sensitivity", "least_compressing", "cache_key", "plot_sensitivity"]

_VERSION = 1  # bump when what is measured changes: old cache files then stop matching


def _ladder(p: Param) -> list[float]:
    """``p``'s values, least compressing first (the rungs of :func:`starting_points`' ladder)."""
    from autocompress.search._sampler import ladder

    return ladder(p)


def least_compressing(p: Param) -> float:
    """The value of ``p`` that compresses least."""
    return _ladder(p)[0]


def _values(p: Param) -> list[float]:
    """The values measured for ``p``: its choices, or the low, middle and high of a range."""
    return sorted(set(_ladder(p)))


@dataclass
class Sensitivity:
    """The damage of every value of every searchable param, alone (``frame``), and of the
    least-compressing candidate (``reference``)."""

    rows: list[dict]  # param, knob, value, accuracy, accuracy_drop, kl, seconds
    reference: dict  # accuracy, accuracy_drop, kl of the least-compressing candidate
    baseline_accuracy: float  # the uncompressed model on the calibration subset
    samples: int  # calibration images
    num_classes: int
    seconds: float  # what computing it took (not reading it from the cache)
    key: str = ""
    cached: bool = False  # read from the cache, nothing evaluated
    evaluations: int = 0  # candidates built and run by this call
    path: str | None = None

    @property
    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["param", "knob", "value", "accuracy", "accuracy_drop", "kl", "seconds"])

    @property
    def images(self) -> int:
        return self.samples

    def lookup(self, param: str):
        """The rows of one param (every value, the least-compressing one included), by value;
        empty for a param not analysed."""
        frame = self.frame
        return frame[frame["param"] == param].sort_values("value").reset_index(drop=True)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("cached", "evaluations", "path")}


def _hash_weights(model: torch.nn.Module, h) -> None:
    for name, t in model.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())


def _param_spec(p: Param) -> dict:
    return {"name": p.name, "knob": p.knob, "layers": list(p.layers),
            "values": None if p.choices is None else list(p.choices), "range": [p.low, p.high, p.step]}


def cache_key(space: BoundSpace, evaluator, recovery=None, samples: int = 512, *, constraints=None) -> str:
    """Hash of what the table depends on: the weights, the data, the space's params, the
    screening ``recovery`` (default: the evaluator's), the target's completion (reference bits,
    batch-norm folding), the bit bounds and the calibration subset."""
    h = hashlib.sha256()
    _hash_weights(evaluator.model, h)
    profile = evaluator.profile
    ref = profile.reference_precision
    blob = {"version": _VERSION, "data": evaluator.data.fingerprint,
            "params": [_param_spec(p) for p in space.params],
            "channel_multiple": space.channel_multiple, "clip": space.clip_range,
            "recovery": asdict(recovery or evaluator.screening), "seed": evaluator.seed, "metric": evaluator.metric,
            "completion": {"reference": None if ref is None else [ref.weights, ref.activations],
                           "precisions": sorted(f"{p.weights}/{p.activations}" for p in profile.precisions),
                           "folds_batchnorm": bool(profile.folds_batchnorm)},
            "bits": None if constraints is None else [constraints.min_bits, constraints.max_bits],
            "samples": samples}
    h.update(json.dumps(blob, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over images of KL(uncompressed || candidate) of the softmax outputs, in nats."""
    p = torch.log_softmax(reference.double(), 1)
    q = torch.log_softmax(logits.double(), 1)
    return float((p.exp() * (p - q)).sum(1).mean())


def sensitivity(space: BoundSpace, evaluator, *, constraints=None, samples: int = 512,
                         progress: Callable[[int, int], None] | None = None, cache: bool = True,
                         params: list[Param] | None = None) -> Sensitivity:
    """The sensitivity table of ``space``'s searchable params for ``evaluator``'s model, data and
    target, from the cache where it is there (no evaluation at all), else measured and cached.

    Every candidate is made as a trial makes it (the space's config, the evaluator's completion,
    the constraints' bit bounds) and built at the screening fidelity. ``progress(done, total)``
    is called after each candidate; ``params`` restricts the analysis to some params."""
    from autocompress.compress.recover import predict
    from autocompress.evaluate import accuracy

    params = [p for p in (params if params is not None else space.searchable)]
    key = cache_key(space, evaluator, evaluator.screening, samples, constraints=constraints)
    names = sorted(p.name for p in params)
    path = cache_dir("sensitivity") / f"{key}.json"
    if cache and path.is_file():
        try:
            stored = json.loads(path.read_text())
            have = {r["param"] for r in stored["rows"]}
            if set(names) <= have:
                stored["rows"] = [r for r in stored["rows"] if r["param"] in set(names)]
                return Sensitivity(**stored, cached=True, evaluations=0, path=str(path))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache file is measured again
    t0 = time.perf_counter()
    bundle = evaluator.data.subset_val(samples)
    x, y = bundle.val_x, bundle.val_y
    base_logits = predict(evaluator.model, x)
    base_acc = accuracy(base_logits, y, evaluator.metric)
    least = {p.name: least_compressing(p) for p in space.searchable}
    todo = [(p, v) for p in params for v in _values(p) if v != least[p.name]]
    total = len(todo) + 1

    def measure(values: dict) -> dict:
        t = time.perf_counter()
        config = evaluator.complete(space.config(values))
        if constraints is not None:
            config = constraints.bound_bits(config, space.table)
        torch.manual_seed(evaluator.seed)  # as Evaluator.evaluate builds a candidate
        logits = predict(evaluator.build(config, evaluator.screening), x)
        acc = accuracy(logits, y, evaluator.metric)
        return {"accuracy": acc, "accuracy_drop": 100.0 * (base_acc - acc), "kl": _kl(base_logits, logits),
                "seconds": round(time.perf_counter() - t, 3)}

    reference = measure(least)
    if progress:
        progress(1, total)
    rows = []
    for p in params:
        for v in _values(p):
            if v == least[p.name]:
                rows.append({"param": p.name, "knob": p.knob, "value": float(v), **reference, "seconds": 0.0})
                continue
            rows.append({"param": p.name, "knob": p.knob, "value": float(v), **measure({**least, p.name: v})})
            if progress:
                progress(len([r for r in rows if r["seconds"] > 0]) + 1, total)
    sens = Sensitivity(rows, reference, base_acc, len(y), int(evaluator.data.num_classes),
                       round(time.perf_counter() - t0, 2), key, cached=False, evaluations=total)
    if cache:
        atomic_write_json(path, sens.to_dict())
        sens.path = str(path)
    return sens


def plot_sensitivity(sens: Sensitivity, *, metric: str = "accuracy_drop", max_params: int = 60):
    """A matplotlib Figure: for every param, the damage (``accuracy_drop`` in points, or ``kl``)
    of each of its values alone, the least-compressing candidate's as a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    frame = sens.frame
    order = list(dict.fromkeys(frame["param"]))[:max_params]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(order) + 2), 4.2))
    values = sorted(set(frame["value"]))
    cmap = plt.get_cmap("viridis")
    for x, name in enumerate(order):
        sub = frame[frame["param"] == name].sort_values("value")
        for _, r in sub.iterrows():
            c = cmap(values.index(r["value"]) / max(1, len(values) - 1))
            ax.scatter([x], [r[metric]], color=c, s=18, zorder=3)
        ax.plot([x] * len(sub), sub[metric], color="0.7", lw=0.8, zorder=2)
    ax.axhline(sens.reference[metric], color="0.4", ls="--", lw=0.8, label="least-compressing candidate")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=90, fontsize=6)
    ax.set_ylabel("accuracy drop (points)" if metric == "accuracy_drop" else "KL to the uncompressed model (nats)")
    if metric == "kl" and frame[metric].max() > 0:
        ax.set_yscale("symlog", linthresh=max(1e-4, float(frame[metric][frame[metric] > 0].min())))
    ax.set_title(f"Sensitivity: each value alone, {sens.samples} calibration images", fontsize=9)
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i / max(1, len(values) - 1)), label=f"{v:g}")
               for i, v in enumerate(values)][:12]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0][:0], title="value", fontsize=6,
              title_fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig
