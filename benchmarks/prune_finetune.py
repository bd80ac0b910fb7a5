"""Does fine-tuning win back what pruning costs? The trained CIFAR-10 ResNet-18 with every
prunable channel group pruned 50% (first conv and classifier kept), measured on CIFAR-10 test
images after batch-norm re-estimation only, and after fine-tuning with distillation from the
uncompressed model for the given budget (the same recovery `--finetune-steps N` gives a search).
Writes benchmarks/results/prune_finetune.json.

    python benchmarks/prune_finetune.py [--steps 200] [--val-samples 2000]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import autocompress.api as api
from autocompress.compress import Recovery
from autocompress.config import CompressionConfig, LayerConfig, resolve
from autocompress.utils import atomic_write_json
from search_quality import ROOT, SHARED, cifar_root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--val-samples", type=int, default=2000)
    args = ap.parse_args()
    prep = api.prepare("resnet18", f"imagefolder:{cifar_root()}", "tpu-v1",
                       weights=str(SHARED / "models" / "resnet18_cifar10.pt"), normalize="cifar10",
                       val_samples=args.val_samples, log=print)
    table = prep.table
    groups = [g for g, grp in table.groups.items() if table.names[0] not in grp.producers]
    config = CompressionConfig(layers={table.groups[g].name: LayerConfig(prune=args.ratio) for g in groups})
    r = resolve(table, config)
    out = {"model": "resnet18 (../shared/models/resnet18_cifar10.pt)", "pruning": f"{args.ratio:.0%} of every "
           f"channel group but the first conv's", "params": r.params, "params_uncompressed": table.total_params,
           "val_images": args.val_samples, "results": {}}
    for label, recovery in (("bn_reestimation_only", Recovery()),
                            (f"finetune_{args.steps}_steps", Recovery(finetune_steps=args.steps))):
        t0 = time.time()
        ev = prep.evaluator(recovery)
        m = ev.evaluate(config)
        out["baseline_accuracy"] = ev.baseline_accuracy
        out["results"][label] = {"accuracy": m.accuracy, "accuracy_drop_points": m.accuracy_drop,
                                 "recovery": asdict(recovery), "seconds": round(time.time() - t0, 1)}
        print(label, out["results"][label], flush=True)
    atomic_write_json(ROOT / "benchmarks" / "results" / "prune_finetune.json", out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
