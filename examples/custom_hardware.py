"""Your own hardware: a profile YAML of your own (examples/my_accelerator.yaml), checked, used to
profile a model per layer and to search compressions for it, next to a shipped target.

    python examples/custom_hardware.py --trials 16
"""
import argparse
import json
import os
from pathlib import Path

import autocompress

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE / "my_accelerator.yaml"))
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--trials", type=int, default=int(os.environ.get("AUTOCOMPRESS_EXAMPLE_TRIALS", 16)))
    ap.add_argument("--val-samples", type=int, default=None)
    ap.add_argument("--max-acc-drop", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default="runs/custom-hardware")
    args = ap.parse_args()

    target = autocompress.load_target(args.profile)  # validated: a bad field is named with its file
    print(f"{target.name}: {target.description}; peak {target.peak_tops:.2f} TOPS, "
          f"precisions {[(p.weights, p.activations) for p in target.precisions]}")

    # per-layer cost of the uncompressed model at the device's reference precision (no training)
    layers, totals = autocompress.profile(args.model, args.profile, data="digits")
    print(layers[["layer", "macs", "latency_ms", "energy_mj", "bound"]].to_string(index=False))
    print(f"uncompressed: {totals['energy_mj']:.5f} mJ, {totals['latency_ms']:.5f} ms per inference ({totals['origin']})")

    result = autocompress.search(args.model, data="digits", target=args.profile, trials=args.trials,
                                 constraints={"max_acc_drop": args.max_acc_drop}, val_samples=args.val_samples,
                                 workers=args.workers, out=args.out)
    best = result.best()
    print(f"best on {target.name}: trial {int(best['trial'])}, energy reduction {best['energy_reduction']:.2f}x "
          f"({best['cost_origin']}), accuracy {100 * best['accuracy']:.2f}%")
    print("RESULT " + json.dumps({"run_dir": str(result.run_dir), "trial": int(best["trial"]),
                                  "energy_reduction": float(best["energy_reduction"]),
                                  "cost_origin": best["cost_origin"], "baseline_energy_mj": totals["energy_mj"]}))


if __name__ == "__main__":
    main()
