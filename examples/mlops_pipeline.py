"""An MLOps pipeline step: search, gate, export, and log everything to MLflow when it is installed.

    pip install -e ".[mlflow]"          # optional: without MLflow the step still runs and says so
    python examples/mlops_pipeline.py --trials 16 --min-energy-reduction 1.5

Steps: (1) search under the constraints, (2) pick the best candidate and gate on it (exit code 1
when it misses the required energy reduction, so a CI pipeline stops), (3) export its config
and the compressed TorchScript model, (4) log parameters, metrics per trial and artifacts
(report, Pareto set, config) to MLflow, (5) print one RESULT line of JSON for the next step.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import autocompress


def log_to_mlflow(result, args, best, artifacts: list[Path], tracking_uri: str) -> str | None:
    try:
        import mlflow
    except ImportError:
        print("MLflow is not installed: skipping MLflow logging (pip install 'autocompress[mlflow]')")
        return None
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name("autocompress") is None:  # artifacts beside the database, not in the cwd
        mlflow.create_experiment("autocompress", artifact_location=(Path(args.out).resolve().parent / "mlartifacts").as_uri())
    mlflow.set_experiment("autocompress")
    with mlflow.start_run(run_name=result.run_dir.name) as run:
        mlflow.log_params({"model": args.model, "target": args.target, "trials": args.trials,
                           "max_acc_drop": args.max_acc_drop, "seed": args.seed})
        for _, t in result.trials[result.trials["status"] == "ok"].iterrows():  # one step per trial
            mlflow.log_metrics({"trial_energy_reduction": float(t["energy_reduction"]),
                                "trial_accuracy": float(t["accuracy"])}, step=int(t["trial"]))
        energy = json.loads((result.run_dir / "search_energy.json").read_text())
        kwh = sum(p["energy_kwh"] or 0 for p in energy["parts"])
        mlflow.log_metrics({"hypervolume": result.hypervolume, "pareto_size": len(result.pareto),
                            "best_energy_reduction": float(best["energy_reduction"]),
                            "best_accuracy": float(best["accuracy"]), "search_energy_kwh": kwh})
        mlflow.set_tags({"cost_origin": best["cost_origin"], "search_energy_method": energy["parts"][-1]["method"]})
        for path in artifacts:
            mlflow.log_artifact(str(path))
        print(f"MLflow: logged run {run.info.run_id} to {tracking_uri}")
        return run.info.run_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--target", default="tpu-v1")
    ap.add_argument("--trials", type=int, default=int(os.environ.get("AUTOCOMPRESS_EXAMPLE_TRIALS", 16)))
    ap.add_argument("--val-samples", type=int, default=None)
    ap.add_argument("--max-acc-drop", type=float, default=1.0)
    ap.add_argument("--min-energy-reduction", type=float, default=1.0, help="gate: fail the step below this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default="runs/pipeline")
    ap.add_argument("--mlflow-uri", default=None, help="tracking URI (default: sqlite:///<beside the run>/mlflow.db)")
    args = ap.parse_args()

    result = autocompress.search(args.model, data="digits", target=args.target, trials=args.trials,
                                 constraints={"max_acc_drop": args.max_acc_drop}, seed=args.seed,
                                 val_samples=args.val_samples, workers=args.workers, out=args.out)
    best = result.best()
    passed = bool(best["energy_reduction"] >= args.min_energy_reduction)
    out = Path(args.out)
    config = result.export(best, "yaml", out / "best.yaml")
    model = result.export(best, "torch", out / "best.pt")
    artifacts = [config, model, result.report_path, result.run_dir / "pareto.csv", result.run_dir / "pareto.png"]
    uri = args.mlflow_uri or f"sqlite:///{out.resolve().parent / 'mlflow.db'}"
    run_id = log_to_mlflow(result, args, best, artifacts, uri)
    print("RESULT " + json.dumps({"run_dir": str(result.run_dir), "trial": int(best["trial"]),
                                  "energy_reduction": float(best["energy_reduction"]), "gate_passed": passed,
                                  "mlflow_run_id": run_id, "artifacts": [str(a) for a in artifacts]}))
    if not passed:
        print(f"gate failed: best energy reduction {best['energy_reduction']:.2f}x < {args.min_energy_reduction}x",
              file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
