"""Search quality on the trained CIFAR-10 ResNet-18: NSGA-II, TPE and random search against
uniform baselines, at an equal trial budget, on TPU v1 and BitFusion.

For each target every method gets the same budget of trials on the same data subset; reported:
hypervolume of its feasible trials (energy reduction x accuracy, reference point: energy
reduction 1 and the baseline's accuracy minus 1 point, the same for every method; and the same
with a reference 5 points below, which credits trade-offs beyond the constraint), the best
energy reduction within 1 point of the baseline's accuracy, and the number of feasible trials.
The uniform baselines (8-bit everywhere; 4-bit weights; 30/50/70% of every prunable channel
group) are evaluated the same way; together they form one more point set.
Accuracy is measured on a fixed subset of the CIFAR-10 test images (no fine-tuning); energy is
modeled with each target's profile. Writes benchmarks/results/search_quality.json; every search
keeps its run directory in benchmarks/runs/ and resumes from it when run again.

    python benchmarks/search_quality.py [--trials 24] [--val-samples 500] [--space resnet]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

import autocompress.api as api
from autocompress.compress import Recovery
from autocompress.config import CompressionConfig, LayerConfig
from autocompress.search.pareto import hypervolume
from autocompress.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = Path.home() / ".cache" / "autocompress-data"


def cifar_root() -> Path:
    if not (DATA / "test").is_dir():
        DATA.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xzf", str(SHARED / "data" / "cifar10-jpeg.tar.gz"), "-C", str(DATA)], check=True)
    return DATA


def uniform_configs(prep) -> dict[str, CompressionConfig]:
    """The uniform baselines, over the layers the shipped ResNet space searches (not the first
    conv or the classifier, which stay at the target's reference precision)."""
    table = prep.table
    inner = table.names[1:-1]
    groups = [g for g, grp in table.groups.items() if table.names[0] not in grp.producers]
    prune = lambda r: {table.groups[g].name: LayerConfig(prune=r) for g in groups}  # noqa: E731
    return {
        "uniform 8-bit": CompressionConfig(layers={n: LayerConfig(wbits=8, abits=8) for n in inner}),
        "uniform 4-bit weights": CompressionConfig(layers={n: LayerConfig(wbits=4, abits=8) for n in inner}),
        **{f"uniform {int(r * 100)}% pruning": CompressionConfig(layers=prune(r)) for r in (0.3, 0.5, 0.7)},
    }


def _hv(points, floor: float) -> float:
    ok = [(e, a) for e, a in points if a >= floor and e >= 1.0]
    return hypervolume(np.array([[-e, -a] for e, a in ok]), np.array([-1.0, -floor])) if ok else 0.0


def summary(points: list[tuple[float, float]], baseline_acc: float) -> dict:
    """Of ``points`` (E, accuracy): hypervolume against (E 1, baseline - 1 point) and against
    (E 1, baseline - 5 points), the best energy reduction within 1 point, and how many are within it."""
    floor = baseline_acc - 0.01
    ok = [(e, a) for e, a in points if a >= floor]
    return {"hypervolume": _hv(points, floor), "hypervolume_5pt": _hv(points, baseline_acc - 0.05),
            "best_energy_reduction_within_1pt": max((e for e, _ in ok), default=None), "feasible": len(ok)}


def markdown(results: dict) -> str:
    """The README's table: one row per target and method."""
    rows = ["| target | method | trials | within 1 point | best energy reduction within 1 point | hypervolume (ref. -1 point) "
            "| hypervolume (ref. -5 points) |", "|---|---|---|---|---|---|---|"]
    for target, t in results["targets"].items():
        for method, m in t["methods"].items():
            best = m["best_energy_reduction_within_1pt"]
            trials = m.get("trials", len(m.get("points", {})))
            rows.append(f"| {target} | {method} | {trials} | {m['feasible']} | {f'{best:.2f}x' if best else 'none'} "
                        f"| {m['hypervolume']:.4f} | {m['hypervolume_5pt']:.4f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--val-samples", type=int, default=500)
    ap.add_argument("--space", default="resnet")
    ap.add_argument("--targets", default="tpu-v1,bitfusion")
    ap.add_argument("--algorithms", default="nsga2,tpe,random")
    args = ap.parse_args()
    root = cifar_root()
    recovery = Recovery(bn_batches=4)
    results = {"model": "resnet18 (../shared/models/resnet18_cifar10.pt, 87.72% on all 10,000 test images)",
               "data": f"CIFAR-10 test subset of {args.val_samples} images (fixed)", "trials": args.trials,
               "space": f"{args.space} (shipped)", "fine_tuning": "none (BN re-estimation on 4 batches of 128)",
               "cost": "modeled with each target's profile",
               "starting_points": "every search's first trials are its space's corners (search._sampler.starting_points)",
               "targets": {}}
    out = ROOT / "benchmarks" / "results" / "search_quality.json"
    for target in args.targets.split(","):
        prep = api.prepare("resnet18", f"imagefolder:{root}", target,
                           weights=str(SHARED / "models" / "resnet18_cifar10.pt"), normalize="cifar10",
                           val_samples=args.val_samples, log=print)
        evaluator = prep.evaluator(recovery)
        base = evaluator.baseline_accuracy
        rows = {"baseline_accuracy": base, "methods": {}}
        t0 = time.time()
        points = []
        for label, config in uniform_configs(prep).items():
            m = evaluator.evaluate(evaluator.complete(config))
            points.append((m.energy_reduction, m.accuracy))
            rows["methods"].setdefault("uniform baselines", {"points": {}})["points"][label] = {
                "energy_reduction": m.energy_reduction, "accuracy": m.accuracy, "accuracy_drop": m.accuracy_drop}
            print(f"{target} {label}: {m.energy_reduction:.2f}x, {100 * m.accuracy:.2f}%", flush=True)
        rows["methods"]["uniform baselines"].update(summary(points, base), seconds=time.time() - t0)
        for algorithm in args.algorithms.split(","):
            t0 = time.time()
            run_dir = ROOT / "benchmarks" / "runs" / f"search-quality-{target}-{algorithm}-{args.trials}"
            resume = run_dir if (run_dir / "trials.jsonl").exists() else None
            result = api.search(prepared=prep, space=args.space, trials=args.trials, algorithm=algorithm, seed=0,
                                recovery=recovery, constraints={"max_acc_drop": 1.0}, workers=1, cpus_per_trial=2,
                                out=None if resume else run_dir, resume=resume, log=print,
                                raise_if_infeasible=False, val_samples=args.val_samples)
            pts = [(r["metrics"]["energy_reduction"], r["metrics"]["accuracy"]) for r in result.records
                   if r.get("metrics") and r["metrics"].get("accuracy") is not None]
            rows["methods"][algorithm] = {**summary(pts, base), "trials": len(result.records),
                                          "seconds": time.time() - t0, "run_dir": str(result.run_dir.relative_to(ROOT))}
            print(target, algorithm, rows["methods"][algorithm], flush=True)
            results["targets"][target] = rows
            atomic_write_json(out, results)  # after every method: a stopped run keeps what it measured
    print(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
