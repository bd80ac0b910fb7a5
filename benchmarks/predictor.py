"""How well the sensitivity-based accuracy predictor ranks real candidates.

Trained CIFAR-10 ResNet-18 on TPU v1, space resnet_full: the sensitivity table (cached), then
seeded random configs screened for real on the validation images; Spearman between predicted
and measured screened accuracy, both before the predictor saw any of them (``predictor_spearman``)
and online (each predicted before the predictor learns from it). Writes
benchmarks/results/predictor.json.

    python benchmarks/predictor.py [--configs 30] [--val-samples 1000]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import autocompress.api as api
from autocompress.compress import Recovery
from autocompress.search.predictor import AccuracyPredictor
from autocompress.search.sensitivity import sensitivity

ROOT = Path(__file__).resolve().parent


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=int, default=30)
    ap.add_argument("--val-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=256, help="calibration images of the sensitivity table")
    ap.add_argument("--space", default="resnet_full")
    args = ap.parse_args()
    prep = api.prepare("resnet18", "imagefolder:/root/.cache/autocompress-data", "tpu-v1",
                       weights="/work/shared/models/resnet18_cifar10.pt", normalize="cifar10",
                       val_samples=args.val_samples, log=print)
    space, ev = prep.space(args.space), prep.evaluator()
    # the table on a cheaper recovery (5 BN batches, not 20): it has ~80 rows and only their
    # ranking matters; the configs below are measured at the search's own screening fidelity
    sens_ev = prep.evaluator(Recovery(bn_batches=5))
    t0 = time.perf_counter()
    sens = sensitivity(space, sens_ev, samples=args.samples,
                       progress=lambda i, n: print(f"sensitivity {i}/{n}", flush=True))
    print(f"sensitivity: {len(sens.frame)} rows, {'cached' if sens.cached else 'measured'}, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    prior = AccuracyPredictor(sens, space.searchable, baseline_accuracy=ev.baseline_accuracy,
                              num_classes=prep.data.num_classes)
    online = AccuracyPredictor(sens, space.searchable, baseline_accuracy=ev.baseline_accuracy,
                               num_classes=prep.data.num_classes)
    rng = np.random.default_rng(args.seed)
    rows = []
    for i in range(args.configs):
        values = {p.name: float(p.choices[rng.integers(len(p.choices))]) for p in space.searchable}
        p_prior = float(prior.predict_accuracy([values])[0])
        p_online = float(online.predict_accuracy([values])[0])
        t = time.perf_counter()
        m = ev.evaluate(ev.complete(space.config(values)), fidelity="screen")
        online.update(values, m.accuracy)
        rows.append({"values": values, "measured": m.accuracy, "predicted": p_prior, "predicted_online": p_online,
                     "energy_reduction": m.energy_reduction, "seconds": round(time.perf_counter() - t, 2)})
        _write(sens, prep, ev, rows, partial=True, space=args.space)
        print(f"config {i}: measured {m.accuracy:.4f} predicted {p_prior:.4f} online {p_online:.4f} "
              f"({rows[-1]['seconds']} s)", flush=True)
    out = _write(sens, prep, ev, rows, partial=False, space=args.space)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))


def _write(sens, prep, ev, rows, partial: bool, space: str) -> dict:
    """Written after every config, so a run cut short still leaves its numbers."""
    measured = [r["measured"] for r in rows]
    rho = float(spearmanr([r["predicted"] for r in rows], measured).statistic) if len(rows) > 2 else None
    rho_online = float(spearmanr([r["predicted_online"] for r in rows], measured).statistic) if len(rows) > 2 else None
    out = {"partial": partial, "predictor_spearman": rho and round(rho, 4),
           "predictor_spearman_online": rho_online and round(rho_online, 4),
           "configs": len(rows), "eval_images": len(prep.data.val_y), "cpu": cpu_name(),
           "sensitivity_seconds": sens.seconds, "sensitivity_images": sens.images,
           "sensitivity_rows": len(sens.frame), "sensitivity_cached": sens.cached,
           "sensitivity_recovery": "screening with bn_batches=5",
           "baseline_accuracy": ev.baseline_accuracy, "space": space, "target": "tpu-v1",
           "note": "predictor_spearman: no measured config seen (prior from the sensitivity table only); "
                   "online: each config predicted before the predictor learned from it",
           "rows": rows}
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "predictor.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
