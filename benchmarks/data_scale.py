"""Does memory grow with the data set? (issue #20) An ImageNet-shaped folder is generated on the
fly (``--classes`` x ``--per-class`` JPEGs at 500x375, smooth synthetic scenes, no download), a
short search runs on ``resnet18`` at 224 px with 2 workers, then the same on a folder
``--factor`` times larger. Written to benchmarks/results/data_scale.json: the images of each
folder, the largest peak resident memory of the driver and of any Ray worker (psutil, sampled
every 0.2 s), images/s of evaluation (validation images over the trials' evaluation seconds),
and whether the folders streamed from disk. Goal: peak memory grows < 10% when the data grows 4x.

The network's weights are random (saved once and passed as --weights): accuracy is not what this
measures, and training a 224-px ResNet-18 baseline on 2 cores would take hours.

    python benchmarks/data_scale.py [--classes 100] [--per-class 100] [--factor 4] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "data_scale.json"
WORK = Path(os.environ.get("AUTOCOMPRESS_BENCH_DIR", "/tmp/autocompress-data-scale"))


def generate(root: Path, classes: int, per_class: int, val_per_class: int, seed: int = 0) -> int:
    """A train/ and val/ folder of 500x375 JPEGs: per class a colour and a shape, random placement."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    count = 0
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"n{c:05d}"
            d.mkdir(parents=True, exist_ok=True)
            colour = tuple(int(v) for v in rng.integers(40, 215, 3))
            for i in range(n):
                path = d / f"{i}.jpg"
                if path.exists():
                    count += 1
                    continue
                im = Image.new("RGB", (500, 375), tuple(int(v) for v in rng.integers(0, 255, 3)))
                draw = ImageDraw.Draw(im)
                for _ in range(3):
                    x, y = int(rng.integers(0, 400)), int(rng.integers(0, 280))
                    r = int(rng.integers(30, 90))
                    box = (x, y, x + r, y + r)
                    (draw.ellipse if c % 2 else draw.rectangle)(box, fill=colour)
                im.save(path, quality=85)
                count += 1
    return count


class PeakMemory:
    """The largest resident memory of this process and of every Ray worker it started, sampled."""

    def __init__(self, every: float = 0.2):
        import psutil

        self.psutil, self.every = psutil, every
        self.driver = 0
        self.workers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = self.psutil.Process()
        while not self._stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            for p in me.children(recursive=True):  # this search's Ray, not another one on the machine
                try:
                    if " ".join(p.cmdline()).startswith("ray::"):
                        self.workers[p.pid] = max(self.workers.get(p.pid, 0), p.memory_info().rss)
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    pass
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        worker = max(self.workers.values(), default=0)
        return {"peak_rss_mb_driver": round(self.driver / 2**20, 1), "peak_rss_mb_worker": round(worker / 2**20, 1),
                "peak_rss_mb": round(max(self.driver, worker) / 2**20, 1), "workers_seen": len(self.workers)}


def run(root: Path, weights: Path, args) -> dict:
    import autocompress
    from autocompress.compress import Recovery

    t0 = time.time()
    with PeakMemory() as peak:
        result = autocompress.search("resnet18", data=f"imagefolder:{root}", weights=str(weights), target="tpu-v1",
                                     trials=args.trials, workers=2, cpus_per_trial=1, algorithm="random",
                                     val_samples=args.val_samples, constraints={"max_acc_drop": 100},
                                     recovery=Recovery(bn_batches=2, batch_size=32), out=WORK / f"run-{root.name}",
                                     log=lambda s: None, report=False, measure_energy=False)
    evaluated = [r for r in result.records if (r.get("metrics") or {}).get("eval_seconds")]
    images = sum(int(r["metrics"]["eval_images"]) + 2 * 32 for r in evaluated)  # + BN re-estimation batches
    seconds = sum(float(r["metrics"]["eval_seconds"]) for r in evaluated)
    from autocompress.data import ImageFiles

    data = result.prepared.data
    return {"split_images": {"train": len(data.train_y), "val_subset": len(data.val_y),
                             "test": len(data.test_y) if data.test_y is not None else 0},
            "streamed": isinstance(data.train_x, ImageFiles), "trials": len(result.records),
            "eval_images_per_s": round(images / seconds, 1) if seconds else None, "wall_s": round(time.time() - t0, 1),
            **peak.summary()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--val-samples", type=int, default=64)
    ap.add_argument("--keep", action="store_true", help="keep the generated folders")
    args = ap.parse_args()

    import torch

    from autocompress.finish import cpu_model
    from autocompress.models import build_model

    WORK.mkdir(parents=True, exist_ok=True)
    weights = WORK / "resnet18-random.pt"
    if not weights.exists():
        torch.manual_seed(0)
        model, _ = build_model("resnet18", num_classes=args.classes, input_shape=(3, 224, 224))
        torch.save(model.state_dict(), weights)
    rows = {}
    for label, per_class in (("small", args.per_class), ("large", args.per_class * args.factor)):
        root = WORK / f"{label}-{args.classes}x{per_class}"
        t = time.time()
        n = generate(root, args.classes, per_class, args.val_per_class)
        print(f"{label}: {n:,} images in {root} ({time.time() - t:.0f} s to generate)", flush=True)
        rows[label] = {"images": n, **run(root, weights, args)}
        print(f"  {rows[label]}", flush=True)
    s, big = rows["small"], rows["large"]
    out = {"images_small": s["images"], "images_large": big["images"],
           "peak_rss_mb_small": s["peak_rss_mb"], "peak_rss_mb_large": big["peak_rss_mb"],
           "peak_memory_growth": round(big["peak_rss_mb"] / s["peak_rss_mb"] - 1, 4),
           "goal": "peak memory grows < 10% when the data grows 4x",
           "eval_images_per_s_small": s["eval_images_per_s"], "eval_images_per_s_large": big["eval_images_per_s"],
           "small": s, "large": big, "cpu": cpu_model(), "cores": os.cpu_count(),
           "settings": {"model": "resnet18 (random weights) at 224 px", "target": "tpu-v1", "workers": 2,
                        "trials": args.trials, "val_samples": args.val_samples, "image_size": "500x375 JPEG",
                        "classes": args.classes, "per_class": [args.per_class, args.per_class * args.factor]},
           "reproduce": "python benchmarks/data_scale.py"}
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("small", "large")}, indent=1))
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
