"""Measured targets (cpu-local, cuda-local) and calibration of a profile to measurements."""
import numpy as np
import pytest
import torch

from autocompress._errors import UserError
from autocompress.hardware import CostModel, load_profile, load_target
from autocompress.hardware.measure import DEFAULT_WATTS_PER_THREAD, _RaplCounter
from tests.test_cli import cli
from tests.test_cli_errors import _one_line_error

RAPL = _RaplCounter.open()


def test_options_of_a_measured_target():
    t = load_target("cpu-local:threads=2,batch=4,runtime=torch,repeats=7,warmup=0,watts=5")
    assert t.measures_built_models and not t.layerwise and t.record() == {"measured": t.spec}
    tpu = load_target("tpu-v1")
    assert tpu.layerwise and not tpu.measures_built_models and tpu.record()["name"] == "tpu-v1"
    assert (t.threads, t.batch_size, t.runtime, t.repeats, t.warmup, t.watts) == (2, 4, "torch", 7, 0, 5.0)
    assert t.origin.startswith("measured:cpu-local (") and "2 threads, batch 4, torch)" in t.origin
    assert load_target("cpu-local").runtime == "onnxruntime"
    for bad, expected in [("cpu-local:cores=2", "option 'cores=2' is not one of"),
                          ("cpu-local:threads=two", "threads must be a int"),
                          ("cpu-local:batch=0", "batch must be at least 1"),
                          ("cpu-local:runtime=tvm", "runtime 'tvm' is not available")]:
        with pytest.raises(UserError, match=expected):
            load_target(bad)


@pytest.mark.parametrize("args, expected", [
    (["search", "--target", "cpu-local:threads=0"], "threads must be at least 1"),
    (["profile", "--target", "cpu-local"], "autocompress calibrate --target cpu-local"),
    (["calibrate", "--target", "tpu-v1", "--out", "x.yaml"], "calibrate measures on this machine"),
    (["calibrate", "--samples", "2", "--out", "x.yaml"], "--samples must be at least 4"),
])
def test_bad_measured_input_is_one_line(args, expected):
    assert expected in _one_line_error(cli(*args))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the measurement test runs instead")
def test_cuda_local_without_a_gpu_is_one_line_error():
    line = _one_line_error(cli("search", "--target", "cuda-local"))
    assert line == "error: cuda-local: no CUDA GPU (torch.cuda.is_available() is False)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")
def test_cuda_local_times_on_the_gpu():
    from tests.tiny_models import tiny_resnet

    t = load_target("cuda-local:repeats=10")
    m = t.measure(tiny_resnet().eval(), (3, 32, 32))
    assert m.latency_s > 0 and m.runs == 10 and m.latency_origin.startswith("measured:cuda-local (")
    assert m.energy_origin.split(":")[0] in ("measured", "estimated")


def test_cpu_local_times_the_model_and_labels_energy_by_its_source():
    from autocompress.models import build_model
    from tests.tiny_models import tiny_resnet

    big, _ = build_model("resnet18", num_classes=10, input_shape=(3, 16, 16))
    t = load_target("cpu-local:repeats=15")
    small_m, big_m = t.measure_many([tiny_resnet().eval(), big.eval()], (3, 16, 16), rounds=2)
    assert big_m.runs == 30 and big_m.spread_s >= 0
    # ResNet-18 has ~60x the MACs of the width-1/8 one: measured time must see it
    assert big_m.latency_s > 3 * small_m.latency_s
    assert big_m.integer_kernels == 0  # a float model: nothing for integer kernels to do
    if RAPL is None:  # this VM: no readable counter, so energy is an estimate and says so
        assert big_m.energy_origin.startswith("estimated:cpu-local (measured time x")
        assert big_m.energy_j == pytest.approx(DEFAULT_WATTS_PER_THREAD * big_m.latency_s)
    else:
        assert big_m.energy_origin.startswith("measured:cpu-local (RAPL")


def test_a_measurement_keeps_the_median_and_the_unloaded_20th_percentile():
    """Searches record the median; calibration fits the 20th percentile (load only adds time)."""
    from types import SimpleNamespace

    t = load_target("cpu-local")
    times = [0.010, 0.011, 0.012, 0.013, 0.030, 0.050]  # two runs slowed by another process
    m = t.summarise(times, None, SimpleNamespace(integer_kernels=3))
    assert m.latency_s == pytest.approx(0.0125) and m.low_s == pytest.approx(0.011)
    assert m.spread_s == pytest.approx(np.percentile(times, 75) - np.percentile(times, 25))
    assert m.integer_kernels == 3 and m.runs == 6


def test_rapl_counter_sums_packages_and_handles_wraparound(tmp_path):
    for pkg, (start, wrap) in {"intel-rapl:0": (900, 1000), "intel-rapl:1": (10, 1000)}.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "energy_uj").write_text(f"{start}\n")
        (tmp_path / pkg / "max_energy_range_uj").write_text(f"{wrap}\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain: already inside the package figure
    counter = _RaplCounter.open(str(tmp_path))
    assert len(counter.files) == 2
    start = counter.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("100\n")  # wrapped: 900 -> 1000 -> 100
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("60\n")
    assert counter.since(start) == pytest.approx((200 + 50) * 1e-6)


def test_a_measured_search_trial_times_before_accuracy_and_rejects_slow_candidates(digits, trained_tiny):
    from autocompress.api import prepare
    from autocompress.search import Constraints, Problem

    prep = prepare(trained_tiny, target="cpu-local:repeats=5", train_data=None, val_data=None, data=None,
                   input_shape="3x8x8", baseline=None, log=lambda s: None)
    prep.data = digits
    evaluator = prep.evaluator()
    space = prep.space("default")
    values = {p.name: (p.choices[-1] if p.categorical else p.low) for p in space.params}
    base = evaluator.baseline_metrics()
    assert base.energy_reduction == 1.0 and base.cost_origin.startswith("measured:cpu-local")

    ok = Problem(space, evaluator, constraints=Constraints(max_acc_drop=None)).evaluate(0, values)
    m = ok["metrics"]
    assert ok["status"] == "ok" and m["accuracy"] is not None and m["latency_ms"] > 0
    assert m["cost_origin"] == prep.profile.origin and m["energy_origin"].startswith(("estimated:", "measured:"))
    # the uncompressed model was timed once in this process, the same way
    assert m["energy_reduction"] == pytest.approx(base.energy_mj / m["energy_mj"], rel=1e-9)

    slow = Problem(space, evaluator, constraints=Constraints(max_acc_drop=None, max_latency_ms=1e-6)).evaluate(1, values)
    assert slow["status"] == "infeasible" and slow["screened"] is True
    assert slow["metrics"]["accuracy"] is None and slow["metrics"]["latency_ms"] > 1e-6
    assert slow["violations"]["max_latency_ms"] > 0


@pytest.mark.slow
def test_calibrated_profile_predicts_held_out_measurements(tmp_path):
    """A small version of benchmarks/measured_vs_calibrated.py, with a looser bound."""
    import autocompress
    from autocompress.api import prepare
    from autocompress.hardware.calibrate import measure_configs, random_configs, spearman

    out = tmp_path / "my-cpu.yaml"
    cal = autocompress.calibrate("resnet18", "cpu-local:repeats=10", out=out, samples=4, input_shape="3x16x16",
                                 num_classes=10, seed=1)
    profile = load_profile(str(out))  # a valid profile that --target my-cpu.yaml uses
    assert profile.name == "my-cpu" and "calibrated on" in profile.sources["calibration"]
    assert "fitted" in profile.precisions[0].source and "not fitted" in profile.power.source
    assert len(cal.configs) == 1 + 4 + 2

    prep = prepare("resnet18", None, "cpu-local:repeats=10", input_shape="3x16x16", num_classes=10, baseline=None,
                   log=lambda s: None)
    space = prep.space()
    held_out = random_configs(space, 4, seed=99)  # disjoint from the calibration's seed-1 draw
    # and the two ends of the space, so that the ranking has something to rank
    held_out.append(space.config({p.name: p.choices[0] for p in space.params}))
    held_out.append(space.config({p.name: max(p.choices) for p in space.params}))
    measured = measure_configs(prep.model, prep.table, prep.profile, held_out, rounds=3)
    predicted = CostModel(prep.table, profile).cost_many(held_out)[0]
    rho = spearman(measured, predicted)
    error = float(np.median(np.abs(predicted / measured - 1)))
    assert rho >= 0.5, (rho, measured, predicted)  # 6 points timed on a shared 2-core machine
    # looser than the benchmark's 20%: a busy machine skews 7 calibration points (seen: 39%);
    # a profile for another CPU is off by ~100% (cpu-haswell in benchmarks/results/calibration.json)
    assert error < 0.5, (error, measured, predicted)
