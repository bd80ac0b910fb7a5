"""Quick start with the Python API: search, pick a candidate, build it, export it, read the report.

    python examples/api_quickstart.py                      # ResNet-18 on the TPU v1, 16 trials
    python examples/api_quickstart.py --trials 4 --val-samples 200

The budget comes from the arguments (or AUTOCOMPRESS_EXAMPLE_TRIALS), so a test can run it small.
"""
import argparse
import json
import os

import autocompress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", help="zoo name or module:callable")
    ap.add_argument("--target", default="tpu-v1")
    ap.add_argument("--trials", type=int, default=int(os.environ.get("AUTOCOMPRESS_EXAMPLE_TRIALS", 16)))
    ap.add_argument("--val-samples", type=int, default=None)
    ap.add_argument("--max-acc-drop", type=float, default=1.0, help="percentage points")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default="runs/quickstart")
    args = ap.parse_args()

    # the search: trials run under Ray Tune; everything lands in the run directory
    result = autocompress.search(args.model, data="digits", target=args.target, trials=args.trials,
                                 constraints={"max_acc_drop": args.max_acc_drop}, val_samples=args.val_samples,
                                 workers=args.workers, out=args.out)
    print(result.pareto[["trial", "accuracy", "accuracy_drop", "size_bytes", "energy_mj", "energy_reduction",
                         "cost_origin"]].to_string(index=False))

    best = result.best()                      # highest energy reduction within the constraints
    model = result.apply(best)                # the compressed nn.Module, channels really removed
    params = sum(p.numel() for p in model.parameters())
    config_path = result.export(best, "yaml", os.path.join(args.out, "best.yaml"))  # re-apply with `autocompress apply`
    print(f"best: trial {int(best['trial'])}, energy reduction {best['energy_reduction']:.2f}x "
          f"({best['cost_origin']}), accuracy {100 * best['accuracy']:.2f}%, {params:,} parameters")
    print(f"config: {config_path}")
    print(f"report: {result.report_path}")
    print("RESULT " + json.dumps({"run_dir": str(result.run_dir), "trial": int(best["trial"]),
                                  "energy_reduction": float(best["energy_reduction"]),
                                  "accuracy": float(best["accuracy"]), "params": params,
                                  "config": str(config_path)}))


if __name__ == "__main__":
    main()
