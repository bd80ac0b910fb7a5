"""Evaluator: turns a CompressionConfig into Metrics.

Figures knowable without data (size, MACs, latency, energy) come from the LayerTable and the
config alone (:meth:`Evaluator.cost_metrics`), so constraints on them are checked before a
model is built. Accuracy and quantisation error come from building the compressed model for
real and running it on the validation data (:meth:`Evaluator.evaluate`).

On a measured target (``cpu-local``, ``cuda-local``) latency and energy are known only once the
model is built: :meth:`Evaluator.measure` times it (before any accuracy is computed), and the
energy reduction divides the uncompressed model's energy, measured the same way in the same
process, by the candidate's.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from autocompress.compress import Recovery, apply
from autocompress.compress.recover import predict
from autocompress.config import FLOAT_BITS, CompressionConfig, resolve
from autocompress.data import DataBundle
from autocompress.graph import LayerTable
from autocompress.hardware import CostModel, Target

__all__ = ["Metrics", "Evaluator", "accuracy", "sqnr_db", "paired_drop_se", "origin_sentence"]

SQNR_SAMPLES = 256


def accuracy(logits: torch.Tensor, labels: torch.Tensor, metric: str = "top1") -> float:
    if metric == "top1":
        return float((logits.argmax(1) == labels).float().mean())
    if metric == "top5":
        k = min(5, logits.shape[1])
        return float((logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean())
    if metric == "macro_f1":
        from sklearn.metrics import f1_score
        return float(f1_score(labels.numpy(), logits.argmax(1).numpy(), average="macro"))
    raise ValueError(f"unknown metric {metric!r}")


def paired_drop_se(reference: torch.Tensor, other: torch.Tensor, labels: torch.Tensor,
                   metric: str = "top1") -> float | None:
    """Standard error, in points, of the accuracy drop of ``other`` against ``reference`` on the
    same images: the per-image differences in correctness carry it, so it is far smaller than
    either accuracy's own error when the two models agree on most images. None for metrics that
    are not a mean over images (macro F1)."""
    if metric not in ("top1", "top5"):
        return None
    if metric == "top1":
        a, b = reference.argmax(1) == labels, other.argmax(1) == labels
    else:
        k = min(5, reference.shape[1])
        a = (reference.topk(k, dim=1).indices == labels[:, None]).any(1)
        b = (other.topk(k, dim=1).indices == labels[:, None]).any(1)
    diff = a.float() - b.float()
    n = len(diff)
    return 0.0 if n < 2 else float(100.0 * diff.std(unbiased=True) / math.sqrt(n))


def sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio of ``other`` against ``reference``, in dB."""
    noise = float(((reference - other) ** 2).sum())
    signal = float((reference ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def origin_sentence(origin: str, energy_origin: str) -> str:
    """Where the cost figures come from, in one sentence: never a modeled figure as measured."""
    if origin.startswith("measured:"):
        energy = ("measured too" if energy_origin.startswith("measured:") else
                  f"estimated from the measured time and a stated power ({energy_origin}), not measured")
        return (f"Latency is measured on this machine ({origin}): median of the timed runs. Energy is {energy}. "
                f"Accuracy is measured on the validation data; drop is against the uncompressed float model.")
    return (f"Cost figures are modeled ({origin}), not measured. Accuracy is measured on the validation "
            f"data; drop is against the uncompressed float model.")


@dataclass
class Metrics:
    """What one candidate scores. Cost figures carry their origin: ``cost_origin`` for latency
    (and energy, unless ``energy_origin`` says otherwise), e.g. ``modeled:tpu-v1``,
    ``measured:cpu-local (...)``, ``estimated:cpu-local (...)``."""

    accuracy: float | None = None  # on the validation data, ``metric``
    accuracy_drop: float | None = None  # percentage points below the uncompressed model
    size_bytes: int = 0
    params: int = 0
    macs: int = 0
    latency_ms: float | None = 0.0  # per batch of the target's batch size; None: not measured yet
    energy_mj: float | None = 0.0  # per inference
    energy_reduction: float | None = 1.0  # reference energy / this energy
    sqnr_db: float | None = None  # logits vs the uncompressed model
    quant_error: float | None = None  # noise power / signal power of the logits, 10^(-sqnr_db / 10)
    weight_sqnr_db: dict[str, float] = field(default_factory=dict)  # per quantised layer: its weights
    weight_sqnr_min_db: float | None = None  # the worst layer
    weight_bits_max: int = FLOAT_BITS  # over the layers left in the model (32: float)
    weight_bits_min: int = FLOAT_BITS
    accuracy_drop_se: float | None = None  # paired standard error of the drop (same images), points
    eval_images: int = 0  # how many validation images the accuracy rests on
    training_images: int = 0  # images through forward + backward to get this candidate (fine-tuning)
    accuracy_screen: float | None = None  # before fine-tuning (the cheap fidelity)
    fidelity: str = "screen"  # "screen": BN re-estimation only; "full": with the fine-tuning budget
    cost_origin: str = ""
    energy_origin: str = ""  # where it differs from cost_origin (an estimate on a measured target)
    latency_spread_ms: float | None = None  # measured: interquartile range of the timed runs
    eval_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["sqnr_db"] is not None and math.isinf(d["sqnr_db"]):
            d["sqnr_db"] = 999.0  # JSON has no infinity; identical logits
        return d


class Evaluator:
    """Everything needed to score candidates of one model on one data set and one target."""

    def __init__(self, model: nn.Module, table: LayerTable, data: DataBundle,
                 profile: Target, *, recovery: Recovery = Recovery(),
                 metric: str = "top1", seed: int = 0):
        self.model = model.eval()
        self.table, self.data, self.profile = table, data, profile
        self.recovery, self.metric, self.seed = recovery, metric, seed
        self.measured = profile.measures_built_models
        if self.measured:
            self.cost_model = None
            self.reference_config = CompressionConfig()  # measured targets run float natively
        else:
            self.cost_model = CostModel(table, profile)
            self.reference_config = self.cost_model.reference()
            self.reference_cost = self.cost_model.cost(self.reference_config)
        self._reference_measurement = None
        self._baseline_logits: torch.Tensor | None = None
        self._baseline_accuracy: float | None = None

    # -- the uncompressed model ------------------------------------------------------------------
    @property
    def baseline_logits(self) -> torch.Tensor:
        if self._baseline_logits is None:
            self._baseline_logits = predict(self.model, self.data.val_x)
        return self._baseline_logits

    @property
    def baseline_accuracy(self) -> float:
        if self._baseline_accuracy is None:
            self._baseline_accuracy = accuracy(self.baseline_logits, self.data.val_y, self.metric)
        return self._baseline_accuracy

    def baseline_metrics(self) -> Metrics:
        """The uncompressed model (float accuracy) at the target's reference precision."""
        m = self.cost_metrics(self.reference_config)
        if self.measured:
            self._fill_measurement(m, self.reference_measurement)
            m.energy_reduction = 1.0
        m.accuracy, m.accuracy_drop, m.sqnr_db = self.baseline_accuracy, 0.0, math.inf
        m.size_bytes = resolve(self.table, CompressionConfig()).size_bytes  # fp32 weights
        return m

    # -- candidates -------------------------------------------------------------------------------
    def complete(self, config: CompressionConfig) -> CompressionConfig:
        """Give layers without bits the target's reference precision when the target has no
        float arithmetic (TPU v1 runs everything in int8), so accuracy is measured on what the
        hardware would run; fold batch norms where the target does."""
        if self.profile.folds_batchnorm and not config.fold_batchnorm:
            config = config.model_copy(update={"fold_batchnorm": True})
        if any(p.weights >= FLOAT_BITS for p in self.profile.precisions):
            return config
        ref = self.profile.reference_precision
        return config.with_default_bits(self.table, ref.weights, ref.activations)

    def cost_metrics(self, config: CompressionConfig) -> Metrics:
        """Size, MACs, latency and energy from the LayerTable and the config alone (on a
        measured target latency and energy stay None until :meth:`measure`)."""
        r = resolve(self.table, config)
        if self.measured:
            return Metrics(size_bytes=r.size_bytes, params=r.params, macs=int(r.macs.sum()),
                           latency_ms=None, energy_mj=None, energy_reduction=None)
        cost = self.cost_model.cost(r)
        bits = r.wbits[r.present]
        return Metrics(size_bytes=r.size_bytes, params=r.params, macs=int(r.macs.sum()),
                       weight_bits_max=int(bits.max()), weight_bits_min=int(bits.min()),
                       latency_ms=cost.latency_s * 1e3, energy_mj=cost.energy_j * 1e3,
                       energy_reduction=self.reference_cost.energy_j / cost.energy_j,
                       cost_origin=cost.origin)

    # -- measured targets -------------------------------------------------------------------------
    @property
    def reference_measurement(self):
        """The uncompressed model timed on the measured target, once per process."""
        if self._reference_measurement is None:
            self._reference_measurement = self.profile.measure(self.model, self.table.input_shape)
        return self._reference_measurement

    def _fill_measurement(self, m: Metrics, meas) -> None:
        m.latency_ms, m.latency_spread_ms = meas.latency_s * 1e3, meas.spread_s * 1e3
        m.energy_mj = meas.energy_j * 1e3
        m.cost_origin, m.energy_origin = meas.latency_origin, meas.energy_origin
        if meas.integer_kernels is not None:
            m.notes.append(f"onnxruntime: {meas.integer_kernels} node(s) on integer kernels")

    def measure(self, compressed: nn.Module, metrics: Metrics) -> Metrics:
        """Latency and energy of a built candidate on the measured target, and its energy
        reduction against the uncompressed model measured the same way in this process."""
        t0 = time.perf_counter()
        self._fill_measurement(metrics, self.profile.measure(compressed, self.table.input_shape))
        metrics.energy_reduction = self.reference_measurement.energy_j * 1e3 / metrics.energy_mj
        metrics.eval_seconds += time.perf_counter() - t0
        return metrics

    @property
    def screening(self) -> Recovery:
        """The cheap fidelity: the same recovery without fine-tuning."""
        from dataclasses import replace
        return replace(self.recovery, finetune_steps=0)

    def build(self, config: CompressionConfig, recovery: Recovery | None = None) -> nn.Module:
        return apply(self.model, self.table, config, data=self.data, recovery=recovery or self.recovery,
                     seed=self.seed)

    def built(self, config: CompressionConfig, fidelity: str = "full") -> tuple[nn.Module, Metrics]:
        """The compressed model of ``config`` at ``fidelity``, built once, and its metrics (as
        :meth:`evaluate` measures them): what a user takes away, the figures it was chosen on."""
        torch.manual_seed(self.seed)
        compressed = self.build(config, self.recovery if fidelity == "full" else self.screening)
        return compressed, self.evaluate(config, fidelity=fidelity, compressed=compressed)

    def evaluate(self, config: CompressionConfig, metrics: Metrics | None = None, *,
                 fidelity: str = "full", compressed: nn.Module | None = None) -> Metrics:
        """Build the compressed model and measure accuracy and quantisation error, at the
        ``screen`` fidelity (no fine-tuning) or the ``full`` one (the recovery budget).
        ``compressed``: the model already built at that fidelity (a measured target built it)."""
        t0 = time.perf_counter()
        m = metrics or self.cost_metrics(config)
        spent_before = m.eval_seconds
        recovery = self.recovery if fidelity == "full" else self.screening
        m.fidelity = "full" if recovery.finetune_steps > 0 else "screen"
        if compressed is None:
            torch.manual_seed(self.seed)
            compressed = self.build(config, recovery)
        if self.measured and m.latency_ms is None:
            self.measure(compressed, m)
        logits = predict(compressed, self.data.val_x)
        m.accuracy = accuracy(logits, self.data.val_y, self.metric)
        m.accuracy_drop = 100.0 * (self.baseline_accuracy - m.accuracy)
        m.eval_images = len(self.data.val_y)
        m.accuracy_drop_se = paired_drop_se(self.baseline_logits, logits, self.data.val_y, self.metric)
        m.training_images = recovery.finetune_steps * recovery.batch_size
        n = min(SQNR_SAMPLES, len(logits))
        m.sqnr_db = sqnr_db(self.baseline_logits[:n], logits[:n])
        m.quant_error = 10 ** (-m.sqnr_db / 10)
        m.weight_sqnr_db = {k: round(v, 3) for k, v in getattr(compressed, "weight_sqnr_db", {}).items()}
        m.weight_sqnr_min_db = min(m.weight_sqnr_db.values(), default=None)
        if m.fidelity == "screen":
            m.accuracy_screen = m.accuracy
        m.eval_seconds = spent_before + time.perf_counter() - t0
        return m
