"""Measured targets: cost a candidate by running it on this machine.

``cpu-local`` times the compressed model on this CPU: onnxruntime runs the QDQ export (integer
kernels where its CPU provider fuses the pattern, float ones elsewhere), or PyTorch runs the
module itself (``runtime=torch``). ``cuda-local`` times it on the local GPU with CUDA events.
Options follow the name: ``cpu-local:threads=2,batch=8,runtime=torch,repeats=50,warmup=5,watts=10``.

Latency: ``warmup`` untimed runs, then ``repeats`` timed runs of one batch; the median is the
figure, the interquartile range its spread. Energy: RAPL package counters
(/sys/class/powercap) or NVML's energy counter where readable (``measured``); elsewhere
measured time x a stated power figure (``estimated``, never ``measured``).
"""
from __future__ import annotations

import contextlib
import glob
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from autocompress._errors import UserError
from autocompress.hardware.profile import Precision, ReferencePrecision
from autocompress.hardware.target import Target

__all__ = ["MeasuredTarget", "Measurement", "parse_measured", "is_measured", "MEASURED_TARGETS", "cpu_name"]

MEASURED_TARGETS = ("cpu-local", "cuda-local")
RUNTIMES = ("onnxruntime", "torch")

#: the low percentile of the timed runs that ranks models on a shared machine: load from other
#: processes only ever adds time, and on ResNet-18 variants timed twice here its ranking repeated
#: with Spearman 0.98, the median's 0.94 (see calibrate.py)
LOW_PERCENTILE = 20
#: power per busy thread when no energy counter is readable: the Xeon E5-2699 v3 of
#: hw_profiles/cpu-haswell.yaml, 145 W busy / 18 cores (Jouppi et al. 2017, Table 2) ~ 8 W
DEFAULT_WATTS_PER_THREAD = 8.0
#: a GPU's board power when NVML cannot report energy: NVIDIA T4's 70 W TDP (hw_profiles/nvidia-t4.yaml)
DEFAULT_GPU_WATTS = 70.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@dataclass(frozen=True)
class Measurement:
    """One model timed on a measured target. Latency is per batch, energy per inference."""

    latency_s: float  # median over the timed runs
    spread_s: float  # interquartile range of the timed runs
    runs: int
    energy_j: float
    latency_origin: str  # "measured:cpu-local (...)"
    energy_origin: str  # "measured:..." or "estimated:..."
    integer_kernels: int | None = None  # onnxruntime: nodes that run on integer kernels
    low_s: float | None = None  # 20th percentile: the unloaded speed (other processes only add time)


@dataclass(frozen=True)
class MeasuredTarget(Target):
    """A target costed by running the model here. Plain data: it travels to Ray workers."""

    name: str = "cpu-local"
    threads: int = 1
    batch_size: int = 1
    runtime: str = "onnxruntime"
    warmup: int = 3
    repeats: int = 20
    watts: float | None = None  # stated power for energy estimates (per thread on a CPU)
    spec: str = "cpu-local"
    device_name: str = field(default_factory=cpu_name)

    # what the search space and evaluator read from any target (as from a HardwareProfile):
    # CPUs compute fp32 natively and int8 through onnxruntime's integer kernels; weights of
    # fewer bits are stored packed in the exported file (INT4), so the search keeps them
    packed_weight_storage = True
    precisions = (Precision(weights=32, activations=32, relative_rate=1.0),
                  Precision(weights=8, activations=8, relative_rate=1.0))
    reference_precision = ReferencePrecision(weights=32, activations=32)
    channel_multiple = 1
    sparsity = "none"  # onnxruntime's CPU kernels and eager PyTorch compute the zeros of 2:4 weights

    @property
    def folds_batchnorm(self) -> bool:
        """onnxruntime fuses batch norms into the convs; eager PyTorch runs them apart."""
        return self.runtime == "onnxruntime"

    @property
    def category(self) -> str:
        return "gpu" if self.name == "cuda-local" else "cpu"

    @property
    def device(self) -> str:
        return "cuda" if self.name == "cuda-local" else "cpu"

    origin_kind = "measured"
    measures_built_models = True  # see Target: costs come from timing the built model (measure)

    def cost(self, table, config, *, detail: bool = False):
        raise UserError(f"{self.name} times whole built models; it cannot cost a config from its layer table "
                        f"(build a profile for this machine with: autocompress calibrate --target {self.spec})")

    def record(self) -> dict:
        return {"measured": self.spec}

    def describe(self) -> list[str]:
        return [f"{self.name}: {self.device_name}, {self.runtime}, batch {self.batch_size}"
                + (f", {self.threads} thread(s)" if self.device == "cpu" else ""),
                f"  latency {self.origin}; energy {self.energy_origin}"]

    @property
    def origin(self) -> str:
        """Origin of the latency figures."""
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}, " if self.device == "cpu" else ""
        return f"measured:{self.name} ({self.device_name}, {threads}batch {self.batch_size}, {self.runtime})"

    @property
    def energy_origin(self) -> str:
        counter = self._energy_counter()
        if counter is not None:
            return f"measured:{self.name} ({counter.label})"
        return f"estimated:{self.name} (measured time x {self._power_text()})"

    def _power_w(self) -> float:
        if self.device == "cuda":
            return self.watts or DEFAULT_GPU_WATTS
        return (self.watts or DEFAULT_WATTS_PER_THREAD) * self.threads

    def _power_text(self) -> str:
        if self.device == "cuda":
            return f"{self._power_w():g} W {'stated' if self.watts else 'assumed (T4 TDP)'}"
        per = f"{self.watts or DEFAULT_WATTS_PER_THREAD:g} W/thread"
        return f"{per} x {self.threads} = {self._power_w():g} W, {'stated' if self.watts else 'assumed'}"

    def _energy_counter(self):
        return _NvmlCounter.open() if self.device == "cuda" else _RaplCounter.open()

    # -- timing ---------------------------------------------------------------------------------
    def example(self, input_shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((self.batch_size, *input_shape), generator=g)

    def runner(self, model: nn.Module, input_shape: tuple[int, ...]) -> "Runner":
        """Ready ``model`` to run one batch on this target (export, session) without timing it."""
        x = self.example(input_shape)
        if self.device == "cuda":
            return _CudaRunner(model, x)
        if self.runtime == "onnxruntime":
            return _OrtRunner(model, x, self.threads)
        return _TorchRunner(model, x, self.threads)

    def time(self, runner: "Runner", repeats: int | None = None, warmup: int | None = None):
        """(run times in seconds, joules over them or None) of ``repeats`` timed runs."""
        counter = self._energy_counter()
        with runner.pinned():
            return _loop(runner.run, self.warmup if warmup is None else warmup, repeats or self.repeats,
                         counter, runner.sync)

    def summarise(self, times: list[float], joules: float | None, runner: "Runner") -> Measurement:
        median = float(np.median(times))
        q1, q3 = np.percentile(times, [25, 75])
        if joules is None:  # no counter: stated power x measured time, and said so
            energy = self._power_w() * median / self.batch_size
            energy_origin = f"estimated:{self.name} (measured time x {self._power_text()})"
        else:
            energy = joules / (len(times) * self.batch_size)
            energy_origin = f"measured:{self.name} ({self._energy_counter().label})"
        return Measurement(median, float(q3 - q1), len(times), energy, self.origin, energy_origin,
                           runner.integer_kernels, float(np.percentile(times, LOW_PERCENTILE)))

    def measure(self, model: nn.Module, input_shape: tuple[int, ...]) -> Measurement:
        """Time ``model`` (a compressed or uncompressed nn.Module) on one batch of this target."""
        runner = self.runner(model, input_shape)
        return self.summarise(*self.time(runner), runner)

    def measure_many(self, models, input_shape: tuple[int, ...], *, rounds: int = 5,
                     progress: Callable[[int, int], None] | None = None) -> list[Measurement]:
        """Time several models in ``rounds`` interleaved rounds of ``repeats`` runs each, so
        that load from other processes, which comes and goes, falls on all of them alike."""
        runners = []
        total = len(models) * (rounds + 1)
        for i, model in enumerate(models):
            runners.append(self.runner(model() if callable(model) and not isinstance(model, nn.Module) else model,
                                       input_shape))
            if progress:
                progress(i + 1, total)
        times = [[] for _ in runners]
        joules: list[float | None] = [0.0 for _ in runners]
        for r in range(rounds):
            for i, runner in enumerate(runners):
                t, j = self.time(runner, warmup=self.warmup if r == 0 else 1)
                times[i] += t
                joules[i] = None if j is None or joules[i] is None else joules[i] + j
                if progress:
                    progress(len(runners) * (r + 1) + i + 1, total)
        return [self.summarise(t, j, runner) for t, j, runner in zip(times, joules, runners)]


class Runner:
    """One model ready to run one batch on a target."""

    integer_kernels: int | None = None
    sync = None

    def run(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def pinned(self):
        yield


class _TorchRunner(Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor, threads: int):
        self.model, self.x, self.threads = model.eval(), x, threads

    def run(self):
        with torch.no_grad():
            self.model(self.x)

    @contextlib.contextmanager
    def pinned(self):
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class _OrtRunner(Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor, threads: int):
        from autocompress.onnx_export import export_onnx, onnx_session

        with tempfile.TemporaryDirectory(prefix="autocompress-measure-") as tmp:
            path = Path(tmp) / "model.onnx"
            # INT8 containers for <= 4-bit weights (same values): integer kernels, not float convs
            export_onnx(model, x[:1], path, int4=False)
            self.session = onnx_session(path, threads, optimized_path=Path(tmp) / "optimized.onnx")
            self.integer_kernels = _integer_nodes(Path(tmp) / "optimized.onnx")
        self.feed = {"input": x.numpy()}

    def run(self):
        self.session.run(None, self.feed)


class _CudaRunner(Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.model, self.x = model.eval().to("cuda"), x.to("cuda")
        self.sync = torch.cuda.synchronize

    def run(self):
        with torch.no_grad():
            self.model(self.x)


def is_measured(spec) -> bool:
    return isinstance(spec, MeasuredTarget) or (
        isinstance(spec, str) and spec.split(":", 1)[0] in MEASURED_TARGETS)


def parse_measured(spec: str) -> MeasuredTarget:
    """``cpu-local`` or ``cuda-local``, with options: ``cpu-local:threads=2,batch=4``."""
    name, _, opts = spec.partition(":")
    if name == "cuda-local" and not torch.cuda.is_available():
        raise UserError("cuda-local: no CUDA GPU (torch.cuda.is_available() is False)")
    kwargs: dict = {}
    keys = {"threads": int, "batch": int, "runtime": str, "repeats": int, "warmup": int, "watts": float}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in keys:
            raise UserError(f"target {spec!r}: option {item!r} is not one of "
                            f"{', '.join(k + '=' for k in keys)} (e.g. cpu-local:threads=2,batch=1)")
        try:
            kwargs[key] = keys[key](value)
        except ValueError:
            raise UserError(f"target {spec!r}: {key} must be a {keys[key].__name__}, not {value!r}") from None
    for key in ("threads", "batch", "repeats"):
        if key in kwargs and kwargs[key] < 1:
            raise UserError(f"target {spec!r}: {key} must be at least 1")
    if kwargs.get("warmup", 0) < 0 or kwargs.get("watts", 1) <= 0:
        raise UserError(f"target {spec!r}: warmup must be >= 0 and watts > 0")
    runtime = kwargs.pop("runtime", "torch" if name == "cuda-local" else "onnxruntime")
    if runtime not in RUNTIMES or (name == "cuda-local" and runtime != "torch"):
        valid = "torch" if name == "cuda-local" else ", ".join(RUNTIMES)
        raise UserError(f"target {spec!r}: runtime {runtime!r} is not available; valid: {valid}")
    if runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError("cpu-local runtime=onnxruntime needs the onnxruntime package "
                            "(pip install onnxruntime), or use cpu-local:runtime=torch") from None
    target = MeasuredTarget(name=name, runtime=runtime, spec=spec, batch_size=kwargs.pop("batch", 1), **kwargs)
    if name == "cuda-local":
        target = replace(target, device_name=torch.cuda.get_device_name(0), threads=1)
    return target


# -- runners --------------------------------------------------------------------------------------
def _loop(run, warmup: int, repeats: int, counter, sync=None) -> tuple[list[float], float | None]:
    for _ in range(warmup):
        run()
    if sync:
        sync()
    start = counter.read() if counter else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    joules = counter.since(start) if counter else None
    return times, joules


def _integer_nodes(path: Path) -> int | None:
    try:
        import onnx

        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    except Exception:  # noqa: BLE001 - the count is information, not a result
        return None
    return sum(op.startswith("QLinear") or op.endswith("Integer") for op in ops)


# -- energy counters ------------------------------------------------------------------------------
class _RaplCounter:
    """Package energy of every CPU package, from the powercap sysfs files (microjoules)."""

    label = "RAPL package energy (whole package, other processes included)"

    def __init__(self, files: list[tuple[str, int]]):
        self.files = files  # (energy_uj path, max_energy_range_uj)

    @classmethod
    def open(cls, root: str = "/sys/class/powercap"):
        files = []
        for d in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
            if d.count(":") != 1:  # sub-domains (core, uncore, dram) are inside the package figure
                continue
            try:
                Path(d, "energy_uj").read_text()
                wrap = int(Path(d, "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            files.append((os.path.join(d, "energy_uj"), wrap))
        return cls(files) if files else None

    def read(self) -> list[int]:
        return [int(Path(p).read_text()) for p, _ in self.files]

    def since(self, start: list[int]) -> float:
        total = 0
        for (_, wrap), a, b in zip(self.files, start, self.read()):
            total += b - a if b >= a else b + wrap - a
        return total * 1e-6


class _NvmlCounter:
    """Total energy of GPU 0 since the driver loaded (millijoules, Volta and later)."""

    label = "NVML total energy counter of GPU 0"

    def __init__(self, handle):
        self.handle = handle

    @classmethod
    def open(cls):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            return cls(handle)
        except Exception:  # noqa: BLE001 - no pynvml, no driver, or an older GPU: estimate instead
            return None

    def read(self) -> int:
        import pynvml
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def since(self, start: int) -> float:
        return (self.read() - start) * 1e-3
