"""Does the cost of one more trial grow with the trials before it? (issue #17, "Scale")

Two measurements, written to benchmarks/results/scale.json:

1. ``search``: a real search (Ray Tune, random sampling, no fine-tuning, a width-1/8 ResNet-18
   on digits, 64 validation images, ``--bn-batches`` batch-norm batches per trial) of
   ``--search-trials`` trials (default 1,000: about 6 minutes on 2 shared cores). In the driver
   it times everything autocompress does per trial besides evaluating it: proposing it
   (``SamplerSearcher.suggest``) and recording it (``on_trial_complete``: the sampler's tell,
   the fsynced trials.jsonl line, trials.csv and pareto.*). It reports the median of that
   per-trial overhead around trial 10 (trials 5-14) and around the last trial (the last 10),
   their ratio (goal <= 1.5), the wall time between trials (which adds Ray Tune's own
   scheduling) and the driver's peak memory.
2. ``bookkeeping``: the same recording path fed ``--trials`` synthetic records (1,000) directly (no Ray, no model),
   as it is now (a row appended, the Pareto set updated from the set so far) and as it was
   before (every table rebuilt after every trial), at trial 10 and trial N: what grew.

    python benchmarks/scale.py [--trials 1000] [--search-trials 1000] [--skip-search]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
OBJ = {"energy_reduction": "max", "accuracy": "max"}
REF = {"energy_reduction": 1.0, "accuracy": 0.5}


def _window(values: list[float], lo: int, hi: int) -> float:
    return statistics.median(values[lo:hi])


def _record(i: int, rng: random.Random) -> dict:
    """A record shaped like a real trial's (config of 20 layers, every metric)."""
    ok = rng.random() < 0.8
    e, a = 1 + 5 * rng.random(), 0.5 + 0.5 * rng.random()
    metrics = {"accuracy": a, "accuracy_drop": 1 - a, "size_bytes": 1e5 * rng.random(), "params": 12345,
               "macs": 1e6, "latency_ms": 0.1, "energy_mj": 0.01, "energy_reduction": e, "sqnr_db": 20.0,
               "quant_error": 0.01, "weight_sqnr_min_db": 15.0, "weight_bits_max": 8, "accuracy_screen": a,
               "fidelity": "screen", "cost_origin": "modeled:tpu-v1"}
    return {"trial": i, "params": {f"p{k}": rng.choice([2, 4, 8]) for k in range(20)},
            "status": "ok" if ok else "infeasible", "seconds": 0.2, "metrics": metrics,
            "config": {"layers": {f"layer{k}": {"wbits": 8, "prune": 0.25} for k in range(20)}}}


def bookkeeping(n: int) -> dict:
    """The recording path, now and before, on ``n`` synthetic records."""
    from autocompress.search.rundir import RunDirectory

    out = {}
    for how in ("now", "before"):
        rng = random.Random(0)
        with tempfile.TemporaryDirectory() as d:
            rd = RunDirectory(d)
            rd.write_tables([], OBJ, REF)
            records, times = [], []
            tracemalloc.start()
            for i in range(n):
                r = _record(i, rng)
                t0 = time.perf_counter()
                records.append(r)
                rd.append(r)
                if how == "now":
                    rd.add_to_tables(r)
                else:
                    rd.write_tables(records, OBJ, REF)
                times.append(time.perf_counter() - t0)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        at10, atn = _window(times, 5, 15), _window(times, n - 10, n)
        out[how] = {"ms_per_trial_at_10": round(1e3 * at10, 3), f"ms_per_trial_at_{n}": round(1e3 * atn, 3),
                    "ratio": round(atn / at10, 3), "python_peak_mb": round(peak / 2**20, 2)}
    return out


def search(n: int, out_dir: Path, bn_batches: int = 20) -> dict:
    import torch

    torch.set_num_threads(1)
    import autocompress
    from autocompress.compress import Recovery
    from autocompress.search import _tune
    from tests.tiny_models import tiny_resnet

    spent: dict[int, float] = {}  # trial index -> driver seconds spent proposing and recording it
    ends: list[float] = []
    evals: list[float] = []
    suggest, complete = _tune.SamplerSearcher.suggest, _tune.SamplerSearcher.on_trial_complete

    def timed_suggest(self, trial_id):
        t0 = time.perf_counter()
        got = suggest(self, trial_id)
        if isinstance(got, dict):
            spent[got["index"]] = spent.get(got["index"], 0.0) + time.perf_counter() - t0
        return got

    def timed_complete(self, trial_id, result=None, error=False):
        index = self.pending[trial_id][1]
        t0 = time.perf_counter()
        complete(self, trial_id, result, error)
        spent[index] = spent.get(index, 0.0) + time.perf_counter() - t0

    _tune.SamplerSearcher.suggest, _tune.SamplerSearcher.on_trial_complete = timed_suggest, timed_complete

    def on_trial(record, records):
        ends.append(time.perf_counter())
        evals.append(float(record.get("seconds") or 0.0))

    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = autocompress.search(tiny_resnet(), data="digits", trials=n, algorithm="random", seed=0,
                                 recovery=Recovery(finetune_steps=0, bn_batches=bn_batches), val_samples=64,
                                 constraints={"max_acc_drop": 100.0}, workers=1, out=out_dir,
                                 log=lambda s: None, on_trial=on_trial, measure_energy=False, report=False,
                                 raise_if_infeasible=False)
    wall = time.perf_counter() - t0
    per = [spent[i] for i in sorted(spent)]
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    at10, atn = _window(per, 5, 15), _window(per, n - 10, n)
    return {
        "trials": len(result.records), "wall_s": round(wall, 1),
        "overhead_ms_per_trial_at_10": round(1e3 * at10, 2), f"overhead_ms_per_trial_at_{n}": round(1e3 * atn, 2),
        "overhead_ratio": round(atn / at10, 3),
        "wall_ms_between_trials_at_10": round(1e3 * _window(gaps, 4, 14), 1),
        f"wall_ms_between_trials_at_{n}": round(1e3 * _window(gaps, n - 11, n - 1), 1),
        "trial_eval_ms_median": round(1e3 * statistics.median(evals), 1),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pareto_size": int(len(result.pareto)),
    }


def _cpu() -> str:
    from autocompress.finish import cpu_model

    return cpu_model()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--search-trials", type=int, default=1000)
    ap.add_argument("--skip-search", action="store_true", help="only the bookkeeping path (no Ray)")
    ap.add_argument("--skip-bookkeeping", action="store_true", help="only the search (keeps the bookkeeping "
                    "figures already in --out)")
    ap.add_argument("--bn-batches", type=int, default=2, help="batch-norm re-estimation batches per trial (the "
                    "trials' own work: few keep 1,000 trials within the hour on 2 cores)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--machine-note", default="", help="what else ran on the machine, for the JSON")
    args = ap.parse_args()
    n = args.trials
    res = {"benchmark": "per-trial bookkeeping versus the number of trials (issue #17)",
           "machine": f"{_cpu()}, {os.cpu_count()} cores" + (f" ({args.machine_note})" if args.machine_note else ""),
           "goal": "overhead at the last trial / overhead at trial 10 <= 1.5",
           "bookkeeping": (json.loads(args.out.read_text())["bookkeeping"] if args.skip_bookkeeping and args.out.exists()
                           else bookkeeping(n))}
    print(json.dumps(res["bookkeeping"], indent=1), flush=True)
    if not args.skip_search:
        with tempfile.TemporaryDirectory() as d:
            res["search"] = search(args.search_trials, Path(d) / "run", args.bn_batches)
            res["search"]["bn_batches"] = args.bn_batches
        if args.search_trials < n:
            res["search"]["note"] = (f"{args.search_trials} trials, not {n}: each trial takes seconds on this shared "
                                     f"machine, so {n} via Ray would take about "
                                     f"{n * res['search']['wall_s'] / args.search_trials / 3600:.1f} h; the "
                                     f"bookkeeping figures above are the {n}-trial measurement of what grows")
        print(json.dumps(res["search"], indent=1), flush=True)
    else:
        res["search"] = "skipped (--skip-search): the bookkeeping path above is measured directly"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
