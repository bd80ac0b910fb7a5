"""Calibration: fit the analytic roofline model's free parameters to measurements on this machine.

A sample of compressed variants (random configs of the model's search space, some of them with
every layer left in float, and the uncompressed model) is built and timed on a measured target.
Five parameters of a roofline profile are then fitted by least squares on log latency:

* fp32 throughput (MACs/s) and the int8 rate relative to it (compute: MACs / throughput),
* effective bandwidth for weights and for activations (memory: bytes / bandwidth),
* a fixed overhead per layer (kernel launch, framework dispatch, the ops between layers).

Layer latency = max(compute, memory) + overhead (a roofline), or compute + memory + overhead
(``memory_overlap: false``, as in onnxruntime running a QDQ model, which dequantises the weights
of every layer it does not fuse into an integer kernel on each run); both are fitted and the one
with the smaller residual is kept. :class:`CostModel` computes exactly this, so the written
profile predicts what was fitted. The result is an ordinary profile YAML.

What is fitted is each variant's 20th-percentile time over interleaved rounds (the unloaded
speed: load from other processes only adds time), not the median a search records.
"""
from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from autocompress.compress import Recovery, apply
from autocompress.config import CompressionConfig
from autocompress.data import DataBundle
from autocompress.graph import LayerTable
from autocompress.hardware.cost import CostModel
from autocompress.hardware.measure import MeasuredTarget, Measurement
from autocompress.hardware.profile import HardwareProfile
from autocompress.space import BoundSpace

__all__ = ["calibrate", "Calibration", "random_configs", "measure_configs", "measure_variants", "fit_profile",
           "spearman"]

#: recovery used to build variants for timing: weights do not matter, shapes and bits do. The
#: batch norms are re-estimated on the random inputs all the same: an untrained model's are the
#: identity, which folds to all-zero biases, and equal biases are not what a real model runs
TIMING_RECOVERY = Recovery(bn_batches=2, calibration_batches=1, batch_size=8)
#: interleaved timing rounds per variant (see MeasuredTarget.measure_many)
ROUNDS = 5
#: every FLOAT_EVERY-th sampled config is also timed with all layers in float, so that the fp32
#: throughput is identifiable next to the int8 one
FLOAT_EVERY = 3
PARAMS = ("fp32_macs_per_s", "int8_rate", "weight_bandwidth", "activation_bandwidth", "layer_overhead_s")


@dataclass
class Calibration:
    profile: HardwareProfile
    configs: list[CompressionConfig]
    measured_s: np.ndarray
    predicted_s: np.ndarray
    params: dict[str, float]
    rms_log_error: float
    yaml_text: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def spearman(self) -> float:
        return spearman(self.measured_s, self.predicted_s)

    @property
    def median_abs_pct_error(self) -> float:
        return float(np.median(np.abs(self.predicted_s / self.measured_s - 1)) * 100)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def random_configs(bound: BoundSpace, n: int, seed: int = 0) -> list[CompressionConfig]:
    """``n`` configs drawn uniformly from the space's choices (ranges: on their step grid)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        values = {}
        for p in bound.params:
            if p.categorical:
                values[p.name] = p.choices[rng.integers(len(p.choices))]
            elif p.step:
                steps = int(math.floor((p.high - p.low) / p.step + 1e-9))
                values[p.name] = p.low + p.step * rng.integers(steps + 1)
            else:
                values[p.name] = rng.uniform(p.low, p.high)
        out.append(bound.config(values, meta={"sample": i}))
    return out


def _float_only(config: CompressionConfig) -> CompressionConfig:
    layers = {k: v.model_copy(update={"wbits": None, "abits": None}) for k, v in config.layers.items()}
    return config.model_copy(update={"layers": layers, "meta": {**config.meta, "float": True}})


def _synthetic_data(table: LayerTable, seed: int) -> DataBundle:
    """Random inputs: enough for batch-norm statistics and activation ranges of a timing run."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((16, *table.input_shape), generator=g)
    y = torch.zeros(16, dtype=torch.long)
    return DataBundle("random (timing only)", x, y, x[:8], y[:8], 2)


def measure_variants(model: nn.Module, table: LayerTable, target: MeasuredTarget, configs: list[CompressionConfig],
                     *, data: DataBundle | None = None, seed: int = 0, rounds: int = ROUNDS,
                     progress: Callable[[int, int], None] | None = None) -> list[Measurement]:
    """Each config built on ``model`` (random inputs for its BN statistics and activation
    ranges) and timed on ``target``, all of them in interleaved rounds."""
    data = data or _synthetic_data(table, seed)

    def builder(config):
        return lambda: apply(model, table, config, data=data, recovery=TIMING_RECOVERY, seed=seed)

    return target.measure_many([builder(c) for c in configs], table.input_shape, rounds=rounds, progress=progress)


def measure_configs(model: nn.Module, table: LayerTable, target: MeasuredTarget, configs: list[CompressionConfig],
                    **kwargs) -> np.ndarray:
    """Latency (s, the 20th percentile of the timed runs) of each config: what calibration fits."""
    return np.array([m.low_s for m in measure_variants(model, table, target, configs, **kwargs)])


def _clock_hz() -> float:
    """The nominal clock (only a unit here: throughput is fitted per cycle of it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]), -1) * 1e6
    except (OSError, ValueError):
        pass
    return 1e9


def _profile_dict(theta: np.ndarray, *, name: str, target: MeasuredTarget, clock: float, overlap: bool = True,
                  source: str = "fitted") -> dict:
    fp32, rate8, w_bw, a_bw, overhead = (float(v) for v in np.exp(theta))
    power = target._power_w()
    return {
        "name": name,
        "description": f"{target.device_name}, {target.threads} thread(s), {target.runtime}: roofline fitted to "
                       f"measurements (autocompress calibrate)",
        "category": target.category,
        "clock_hz": clock,
        "peak_macs_per_cycle": fp32 / clock,
        "fabric": {"kind": "roofline", "source": source},
        "precisions": [
            {"weights": 32, "activations": 32, "relative_rate": 1.0, "source": f"{source}: {fp32 / 1e9:.3g} GMAC/s"},
            {"weights": 8, "activations": 8, "relative_rate": min(64.0, rate8),
             "source": f"{source}: int8 {rate8:.3g}x fp32 (onnxruntime QDQ)" if target.runtime == "onnxruntime"
             else f"{source}: int8 {rate8:.3g}x fp32"},
        ],
        "reference_precision": {"weights": 32, "activations": 32},
        "memory": [
            {"name": "weights (effective)", "size_bytes": 2.0 ** 40, "bandwidth_bytes_per_s": w_bw,
             "energy_pj_per_byte": 0.0, "holds": ["weights"], "off_chip": True,
             "source": f"{source}: effective bandwidth of weight reads"},
            {"name": "activations (effective)", "size_bytes": 2.0 ** 40, "bandwidth_bytes_per_s": a_bw,
             "energy_pj_per_byte": 0.0, "holds": ["activations"],
             "source": f"{source}: effective bandwidth of activation reads and writes"},
        ],
        # energy = latency x power: the same stated figure cpu-local estimates energy with
        "power": {"idle_w": power, "busy_w": power,
                  "source": f"not fitted: {target.energy_origin.split('(', 1)[-1].rstrip(')')}"},
        "energy_model": "power",
        "packed_weight_storage": False,  # measured with INT8 containers for <= 8-bit weights
        "layer_overhead_cycles": int(round(overhead * clock)),
        "memory_overlap": overlap,
        "batch_size": target.batch_size,
    }


def _predict(theta, table, configs, *, name, target, clock, overlap) -> np.ndarray:
    profile = HardwareProfile.model_validate(_profile_dict(theta, name=name, target=target, clock=clock,
                                                           overlap=overlap))
    return CostModel(table, profile).cost_many(configs)[0]


def fit_profile(table: LayerTable, target: MeasuredTarget, configs: list[CompressionConfig], measured_s: np.ndarray,
                *, name: str = "cpu-local-calibrated") -> tuple[np.ndarray, float, bool]:
    """Least squares on log latency over the five parameters (in log space), with memory
    overlapping compute and without; returns the best parameters, the RMS log error and whether
    memory overlaps. Several starts: max() makes the surface piecewise."""
    from scipy.optimize import least_squares

    clock = _clock_hz()
    y = np.log(measured_s)
    # a start: the whole model's MACs at its median latency, memory and overhead small
    from autocompress.config import resolve

    total = np.array([resolve(table, c).macs.sum() * target.batch_size for c in configs], dtype=float)
    throughput = float(np.median(total / measured_s))
    n_layers = len(table)
    best, best_overlap = None, True
    lo = np.log([1e6, 1.0, 1e7, 1e7, 1e-9])
    hi = np.log([1e15, 64.0, 1e14, 1e14, 1.0])
    for overlap in (True, False):
        def residual(t, overlap=overlap):
            return np.log(_predict(t, table, configs, name=name, target=target, clock=clock, overlap=overlap)) - y

        for mem_scale in (3e9, 1e11):  # memory-bound and compute-bound starts
            for overhead in (1e-6, float(np.min(measured_s)) / n_layers / 4):
                x0 = np.log([throughput, 1.0, mem_scale, mem_scale, max(overhead, 1e-8)])
                fit = least_squares(residual, np.clip(x0, lo + 1e-9, hi - 1e-9), bounds=(lo, hi), diff_step=1e-3,
                                    max_nfev=100)
                if best is None or fit.cost < best.cost:
                    best, best_overlap = fit, overlap
    rms = float(np.sqrt(np.mean(best.fun ** 2)))
    return best.x, rms, best_overlap


def calibrate(model: nn.Module, table: LayerTable, target: MeasuredTarget, bound: BoundSpace, *, samples: int = 24,
              data: DataBundle | None = None, seed: int = 0, out: str | Path | None = None, name: str | None = None,
              model_desc: str = "", progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Measure ``samples`` variants of ``model`` on ``target``, fit a profile, write it to ``out``."""
    import yaml

    name = name or (Path(out).stem if out else f"{target.name}-calibrated")
    sampled = random_configs(bound, samples, seed)
    configs = [CompressionConfig(meta={"reference": True})] + sampled
    configs += [_float_only(c) for c in sampled[::FLOAT_EVERY]]
    measured = measure_configs(model, table, target, configs, data=data, seed=seed, progress=progress)
    theta, rms, overlap = fit_profile(table, target, configs, measured, name=name)
    clock = _clock_hz()
    when = datetime.date.today().isoformat()
    source = (f"calibrated on {target.device_name} on {when}, {len(configs)} samples of {model_desc or 'the model'} "
              f"at {'x'.join(map(str, table.input_shape))}, fit residual {100 * (math.exp(rms) - 1):.1f}% RMS")
    data_ = _profile_dict(theta, name=name, target=target, clock=clock, overlap=overlap, source=f"fitted ({source})")
    data_["notes"] = [
        f"Fitted by autocompress calibrate to {target.origin}: least squares on log latency over "
        f"{len(configs)} measured variants (random configs of the '{bound.space.name}' space, "
        f"{len(sampled[::FLOAT_EVERY])} of them also all-float, and the uncompressed model).",
        "Weights of 8 bits or fewer were timed in INT8 containers; clock_hz is the nominal clock "
        "(a unit: throughput was fitted per cycle of it).",
        f"Latency fitted: the 20th percentile of each variant's timed runs; memory "
        f"{'overlaps compute (roofline)' if overlap else 'adds to compute (fitted better than a roofline)'}.",
    ]
    data_["sources"] = {"calibration": source, "measurements": target.origin}
    profile = HardwareProfile.model_validate(data_)
    predicted = CostModel(table, profile).cost_many(configs)[0]
    params = {**dict(zip(PARAMS, (float(v) for v in np.exp(theta)))), "memory_overlap": overlap}
    header = (f"# Calibrated profile written by autocompress calibrate on {when}.\n"
              f"# Every figure was fitted to measurements on this machine; see sources and notes.\n")
    text = header + yaml.safe_dump(data_, sort_keys=False, width=110)
    result = Calibration(profile, configs, measured, predicted, params, rms, text)
    if out is not None:
        from autocompress.utils import atomic_write_text

        atomic_write_text(Path(out), text)
    return result
