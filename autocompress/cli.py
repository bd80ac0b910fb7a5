"""Command line: ``autocompress search | report | profile | targets | calibrate | export | apply``. Thin:
parses, calls the API, prints.

Bad input ends in one line on stderr and exit code 2 (3 when a search finds nothing feasible).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autocompress._errors import NothingFeasible, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the best way to compress a neural network for a given piece of hardware.")


def _version(value: bool) -> None:
    if value:
        from autocompress import __version__

        print(f"autocompress {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Find the best way to compress a neural network for a given piece of hardware."""
console = Console(width=None if sys.stdout.isatty() else 160)


def _fail(message: str, code: int) -> None:
    print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the terminal width
    sys.exit(code)


def _mb(x) -> str:
    return f"{x / 1e6:.2f}"


def pareto_table(pareto, baseline: dict, origin: str, title: str, energy_origin: str | None = None) -> Table:
    t = Table(title=title, title_justify="left")
    energy_origin = energy_origin or origin
    for col, just in [("trial", "right"), ("accuracy %", "right"), ("drop pp", "right"), ("size MB", "right"),
                      (f"energy mJ\n{energy_origin}", "right"), (f"latency ms\n{origin}", "right"),
                      (f"energy reduction\n{energy_origin}", "right"), ("SQNR dB", "right")]:
        t.add_column(col, justify=just)
    t.add_row("base", f"{100 * baseline['accuracy']:.2f}", "0.00", _mb(baseline["size_bytes"]),
              f"{baseline['energy_mj']:.4f}", f"{baseline['latency_ms']:.4f}", "1.00x", "-", style="dim")
    for _, r in pareto.iterrows():
        sq = r["sqnr_db"]
        t.add_row(str(int(r["trial"])), f"{100 * r['accuracy']:.2f}", f"{r['accuracy_drop']:.2f}",
                  _mb(r["size_bytes"]), f"{r['energy_mj']:.4f}", f"{r['latency_ms']:.4f}",
                  f"{r['energy_reduction']:.2f}x", "inf" if sq is None or sq >= 999 else f"{sq:.1f}")
    return t


@app.command()
def search(
    model: str = typer.Option("resnet18", help="zoo name or module.path:callable"),
    target: str = typer.Option("tpu-v1", help="hardware profile name, path to a profile YAML, or a measured "
                               "target: cpu-local[:threads=N,batch=N,runtime=onnxruntime|torch], cuda-local"),
    data: str = typer.Option("digits", help="digits (built in) or imagefolder:PATH"),
    weights: Optional[Path] = typer.Option(None, help="state dict to load; without it a baseline is trained and cached"),
    space: Optional[str] = typer.Option(None, help="search space name or YAML path (default: tuned for the model)"),
    trials: int = typer.Option(24, help="trial budget"),
    algorithm: str = typer.Option("nsga2", help="nsga2, tpe, random (Optuna), pymoo-nsga2, pymoo-nsga3 (pymoo)"),
    seed: int = typer.Option(0, help="sampler seed (with --workers 1 the whole search repeats exactly)"),
    objectives: str = typer.Option("energy_reduction,accuracy", help="comma-separated: energy_reduction, accuracy, size_bytes, latency_ms"),
    max_acc_drop: float = typer.Option(1.0, help="largest accepted top-1 drop, percentage points"),
    max_size_mb: Optional[float] = typer.Option(None, help="largest model size, MB (weights at their bits plus scales)"),
    max_params: Optional[int] = typer.Option(None, help="most parameters"),
    max_macs: Optional[int] = typer.Option(None, help="most multiply-accumulates per inference"),
    max_latency_ms: Optional[float] = typer.Option(None, help="largest latency per batch on the target, ms"),
    min_energy_reduction: Optional[float] = typer.Option(None, help="smallest energy reduction (uncompressed / candidate)"),
    min_sqnr_db: Optional[float] = typer.Option(None, help="smallest SQNR of the logits against the uncompressed model, dB"),
    max_quant_error: Optional[float] = typer.Option(None, help="largest logits noise/signal power ratio, 10^(-SQNR/10)"),
    max_bits: Optional[int] = typer.Option(None, help="upper bound on every weight's bit-width"),
    min_bits: Optional[int] = typer.Option(None, help="lower bound on every weight's bit-width"),
    clip_range: Optional[str] = typer.Option(None, help="quantisation range MIN,MAX: tensors are clipped to it "
                                             "before quantising (write --clip-range=-4,4)"),
    metric: str = typer.Option("top1", help="top1, top5 or macro_f1"),
    finetune_steps: int = typer.Option(0, help="fine-tuning steps (with distillation) per candidate"),
    val_samples: Optional[int] = typer.Option(None, help="evaluate on a fixed class-balanced subset of the validation split"),
    val_split: Optional[int] = typer.Option(None, help="training images held out (class-balanced) as the validation "
                                            "split the search decides on (default: 20%, at most 5000; 0: none)"),
    normalize: str = typer.Option("auto", help="auto (training-set statistics), cifar10 or imagenet"),
    input_shape: Optional[str] = typer.Option(None, help="expected input shape, e.g. 3x32x32 (checked against the data)"),
    workers: Optional[int] = typer.Option(None, help="concurrent trials (default: free cores)"),
    resources_per_trial: Optional[str] = typer.Option(None, help="e.g. cpu=2 or cpu=4,gpu=1 (Ray resources "
                                                      "each trial reserves; default: the cores shared out)"),
    ray_address: Optional[str] = typer.Option(None, help="run the trials on an existing Ray cluster"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<model>-<target>-<time>)"),
    resume: Optional[Path] = typer.Option(None, help="continue a killed search from its run directory"),
    grid_gco2_kwh: Optional[float] = typer.Option(None, help="grid carbon intensity for the report (default: world average 475, IEA 2019)"),
    pue: Optional[float] = typer.Option(None, help="data-centre PUE for the report (default: 1.58, Uptime Institute 2023)"),
    country: Optional[str] = typer.Option(None, help="ISO 3166 alpha-3 code: the grid intensity of that country (codecarbon's data)"),
):
    """Search compressions of a model for a target; print the Pareto set and write the report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import autocompress.api as api
    from autocompress.compress import Recovery
    from autocompress.search import Constraints

    if resume is not None:  # the run directory knows what was searched
        args = api.resume_arguments(resume)
        model, data, target, space = args["model"], args["data"], args["target"], args["space"]
        weights = Path(args["weights"]) if args["weights"] else None
        trials, algorithm, seed, metric = args["trials"], args["algorithm"], args["seed"], args["metric"]
        objectives = ",".join(args["objectives"])
        constraints = args["constraints"]
        clip = args["clip_range"]
        val_samples, val_split, normalize = args["val_samples"], args["val_split"], args["normalize"]
        finetune_steps = args["recovery"].finetune_steps
    else:
        constraints = Constraints(max_acc_drop=max_acc_drop, max_size_mb=max_size_mb, max_params=max_params,
                                  max_macs=max_macs, max_latency_ms=max_latency_ms,
                                  min_energy_reduction=min_energy_reduction, min_sqnr_db=min_sqnr_db,
                                  max_quant_error=max_quant_error, max_bits=max_bits, min_bits=min_bits)
        clip = _numbers(clip_range, "--clip-range", 2) if clip_range else None
    cpus, gpus = _resources(resources_per_trial)
    from autocompress.hardware import load_target
    from autocompress.space import SearchSpace, load_space

    load_target(target)  # bad names, files and options fail now, not after the baseline is trained
    if space is not None and not isinstance(space, SearchSpace):
        load_space(space)
    recovery = Recovery(finetune_steps=finetune_steps)
    objs = [o.strip() for o in objectives.split(",") if o.strip()]
    from autocompress.carbon import carbon_settings

    carbon_settings(grid_gco2_kwh, pue, country)  # bad figures fail now, not after the search
    from autocompress.search import SearchSettings

    SearchSettings(trials=trials, algorithm=algorithm)  # a bad budget or algorithm too, before any training
    from autocompress.search import RunSettings

    RunSettings(workers=workers, cpus_per_trial=cpus, gpus_per_trial=gpus, ray_address=ray_address).resolved()
    t0 = time.time()
    console.print(f"[bold]autocompress[/] search: {model} on {target}, {trials} trials, {algorithm}")
    prep = api.prepare(model, data, target, weights=str(weights) if weights else None, input_shape=input_shape,
                       val_samples=val_samples, val_split=val_split, normalize=normalize, log=console.print)
    console.print(f"model: {prep.model_desc}; {len(prep.table)} layers, "
                  f"{prep.table.total_macs / 1e6:.1f} M MACs, {prep.table.total_params / 1e6:.2f} M parameters")
    for note in prep.notes:
        console.print(f"  {note}", style="dim")

    progress = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("feasible {task.fields[feasible]}"),
                        TextColumn("best feasible energy reduction {task.fields[best]}"),
                        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console)
    task = progress.add_task("search", total=trials, feasible=0, best="-")

    def on_trial(record, records):
        # "ok" is a trial that met every constraint: the best is within the constraints
        ok = [r for r in records if r["status"] == "ok"]
        best = max((r["metrics"]["energy_reduction"] for r in ok), default=None)
        progress.update(task, completed=len(records), feasible=len(ok),
                        best=f"{best:.2f}x" if best is not None else "-")

    try:
        with progress:
            done_before = 0
            if resume is not None:
                from autocompress.search import RunDirectory
                done_before = len(RunDirectory(resume).trials())
                progress.update(task, completed=done_before)
            result = api.search(model, data=data, target=target, space=space, objectives=objs,
                                constraints=constraints, trials=trials, algorithm=algorithm, seed=seed,
                                recovery=recovery, metric=metric, clip_range=clip, workers=workers,
                                cpus_per_trial=cpus, gpus_per_trial=gpus, ray_address=ray_address,
                                out=out, resume=resume, prepared=prep, log=console.print, on_trial=on_trial,
                                grid_gco2_kwh=grid_gco2_kwh, pue=pue, country=country)
    except NothingFeasible as e:
        _print_result(e.result, prep.profile, time.time() - t0)
        raise
    except KeyboardInterrupt:
        run_dir = resume or _latest_run(out)
        _fail(f"interrupted; every finished trial is kept. Resume with: "
              f"autocompress search --resume {run_dir}", 130)
    _print_result(result, prep.profile, time.time() - t0)


def _numbers(text: str, option: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise UserError(f"{option} takes {count} comma-separated numbers, not {text!r}")
    return values


def _resources(text: Optional[str]) -> tuple[Optional[float], float]:
    """``cpu=2,gpu=1`` -> (2.0, 1.0); missing parts: (None, 0)."""
    if not text:
        return None, 0.0
    found = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            found[key.strip().lower()] = float(value)
        except ValueError:
            raise UserError(f"--resources-per-trial: {part!r} is not KEY=NUMBER (e.g. cpu=2,gpu=1)") from None
    unknown = set(found) - {"cpu", "gpu"}
    if unknown:
        raise UserError(f"--resources-per-trial knows cpu and gpu, not {sorted(unknown)[0]!r}")
    return found.get("cpu"), found.get("gpu", 0.0)


def _latest_run(out: Optional[Path]) -> str:
    if out:
        return str(out)
    runs = sorted(Path("runs").glob("*"), key=lambda p: p.stat().st_mtime) if Path("runs").is_dir() else []
    return str(runs[-1]) if runs else "RUN_DIR"


def _print_result(result, target, seconds: float) -> None:
    origin = target.origin
    energy_origin = getattr(target, "energy_origin", origin)
    failed = result.trials[result.trials["status"] == "failed"]
    screened = sum(1 for r in result.records if r.get("screened"))
    feasible = int((result.trials["status"] == "ok").sum())
    console.print(f"\n{len(result.trials)} trials in {seconds:.0f} s: {feasible} feasible, "
                  f"{len(result.trials) - feasible - len(failed)} infeasible ({screened} rejected before "
                  f"evaluating accuracy), {len(failed)} failed")
    if len(failed):
        reasons = failed["error"].fillna("unknown").str.slice(0, 100).value_counts()
        for reason, n in reasons.items():
            console.print(f"  failed x{n}: {reason}", style="yellow")
    if result.pareto.empty:
        console.print(f"run directory: {result.run_dir}")
        return
    if result.report_path is None:  # the report failed (said why): the plain table still shows the result
        console.print(pareto_table(result.pareto, result.baseline, origin,
                                   f"Pareto set ({len(result.pareto)} candidates, hypervolume {result.hypervolume:.4f})",
                                   energy_origin))
        from autocompress.evaluate import origin_sentence

        console.print(origin_sentence(origin, energy_origin))
    else:
        from autocompress.report import build_report
        from autocompress.carbon import carbon_settings

        rep = build_report(result.run_dir, carbon=carbon_settings(stored=_stored_carbon(result.run_dir)))
        _print_report(rep)
    console.print(f"run directory: {result.run_dir}")


def _stored_carbon(run_dir) -> dict | None:
    from autocompress.search import RunDirectory
    return RunDirectory(run_dir).settings.get("carbon")


def _print_report(rep) -> None:
    console.print(rep.rich_table())
    for line in rep.summary_lines()[1:]:
        console.print(line)
    html_path = rep.run_dir / "report.html"
    if html_path.exists():
        pngs = ", ".join(p.name for p in sorted(rep.run_dir.glob("*.png")))
        console.print(f"report: {html_path} (plots: {pngs})")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a search's run directory (finished or killed)"),
    pick: str = typer.Option("best", help="candidate for the per-layer view: a trial number, or best (highest "
                                          "energy reduction on the Pareto set within the accuracy limit)"),
    max_acc_drop: Optional[float] = typer.Option(None, help="with --pick best: largest accepted accuracy drop"),
    grid_gco2_kwh: Optional[float] = typer.Option(None, help="grid carbon intensity (default: as set for the search, "
                                                             "else world average 475, IEA 2019)"),
    pue: Optional[float] = typer.Option(None, help="data-centre PUE (default: as set for the search, else 1.58, Uptime Institute 2023)"),
    country: Optional[str] = typer.Option(None, help="ISO 3166 alpha-3 code: the grid intensity of that country (codecarbon's data)"),
    queries: Optional[float] = typer.Option(None, help="inferences served, for the lifecycle footprint (default 1e9)"),
):
    """Print the Pareto table and write report.html and its PNG plots into the run directory."""
    from autocompress.carbon import carbon_settings
    from autocompress.report import build_report

    if not (run_dir / "settings.json").is_file():
        raise UserError(f"{run_dir} is not a run directory (no settings.json)")
    carbon = carbon_settings(grid_gco2_kwh, pue, country, queries, stored=_stored_carbon(run_dir))
    if pick == "best":
        trial = None
    else:
        try:
            trial = int(pick)
        except ValueError:
            raise UserError(f"--pick must be a trial number or 'best', not {pick!r}") from None
    rep = build_report(run_dir, pick=trial, carbon=carbon, max_acc_drop=max_acc_drop)
    rep.write()
    console.print(rep.summary_lines()[0])
    _print_report(rep)


@app.command()
def targets():
    """List the shipped hardware profiles with their key figures."""
    from autocompress.hardware import list_profiles, load_profile

    t = Table(title="hardware profiles (hw_profiles/)", title_justify="left")
    for col in ("name", "category", "fabric", "peak TOPS", "clock MHz", "reference", "weight memory", "power W"):
        t.add_column(col)
    for name in list_profiles():
        p = load_profile(name)
        fab = f"{p.fabric.rows}x{p.fabric.cols} systolic" if p.fabric.kind == "systolic_array" else p.fabric.kind
        wmem = next(m for m in p.memory if "weights" in m.holds)
        ref = p.reference_precision
        t.add_row(p.name, p.category, fab, f"{p.peak_tops:.1f}", f"{p.clock_hz / 1e6:.0f}",
                  f"w{ref.weights}/a{ref.activations}", f"{wmem.bandwidth_bytes_per_s / 1e9:.0f} GB/s",
                  f"{p.power.idle_w:g}-{p.power.busy_w:g}")
    console.print(t)
    console.print("measured targets (time each candidate on this machine): cpu-local[:threads=N,batch=N,"
                  "runtime=onnxruntime|torch,repeats=N,warmup=N,watts=W], cuda-local (needs a CUDA GPU). "
                  "autocompress calibrate fits a profile to cpu-local measurements.")


@app.command()
def profile(
    model: str = typer.Option("resnet18", help="zoo name or module.path:callable"),
    target: str = typer.Option("tpu-v1", help="hardware profile name or YAML path"),
    input_shape: Optional[str] = typer.Option(None, help="e.g. 3x224x224 (default: the data's shape)"),
    num_classes: Optional[int] = typer.Option(None, help="classifier outputs (default: the data's, or 1000 with --input-shape)"),
    data: str = typer.Option("digits", help="data set that sets the input shape when --input-shape is not given"),
    stem: Optional[str] = typer.Option(None, help="imagenet or cifar (default: cifar for inputs <= 64 px)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
):
    """Per-layer MACs, parameters, latency and energy of the uncompressed model on a target."""
    import autocompress.api as api

    frame, totals = api.profile(model, target, input_shape=input_shape, num_classes=num_classes, data=data, stem=stem)
    if as_json:
        rows = json.loads(frame.to_json(orient="records"))
        print(json.dumps({"totals": totals, "layers": rows}, indent=1))
        return
    t = Table(title=f"{totals['model']} on {totals['target']}, input {'x'.join(map(str, totals['input_shape']))}, "
                    f"{totals['precision']}; cost {totals['origin']}", title_justify="left")
    for col in ("layer", "kind", "MACs", "params", "bits w/a", "latency ms", "energy mJ", "util %", "bound"):
        t.add_column(col, justify="left" if col in ("layer", "kind", "bound") else "right")
    for _, r in frame.iterrows():
        t.add_row(r["layer"], r["kind"], f"{r['macs']:,}", f"{r['params']:,}", f"{r['wbits']}/{r['abits']}",
                  f"{r['latency_ms']:.4f}", f"{r['energy_mj']:.4f}", f"{100 * r['utilization']:.1f}", r["bound"])
    t.add_row("total", "", f"{totals['macs']:,}", f"{totals['params']:,}", "", f"{totals['latency_ms']:.4f}",
              f"{totals['energy_mj']:.4f}", "", "", style="bold")
    console.print(t)
    console.print(f"{totals['macs'] / 1e9:.3f} GMACs, {totals['params'] / 1e6:.2f} M parameters "
                  f"(all parameters of the model); latency and energy {totals['origin']}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a search's run directory"),
    pick: str = typer.Option("best", help="trial number, or best (highest energy reduction on the Pareto set)"),
    max_acc_drop: Optional[float] = typer.Option(None, help="with --pick best: largest accepted accuracy drop"),
    fmt: str = typer.Option("yaml", "--format", help="json, yaml (the config), csv (per-layer table), torch "
                            "(TorchScript model), onnx (QDQ ONNX model)"),
    out: Path = typer.Option(..., help="file to write"),
):
    """Export a candidate of a finished search."""
    import autocompress.api as api
    from autocompress.config import CompressionConfig
    from autocompress.export import FORMATS
    from autocompress.export import export as do_export

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    from autocompress.finish import pick_record

    record = pick_record(run_dir, pick, max_acc_drop)
    config = CompressionConfig.from_dict(record["config"])
    args = api.resume_arguments(run_dir)
    prep = api.prepare(args["model"], args["data"], args["target"], weights=args["weights"],
                       val_samples=args["val_samples"], val_split=args["val_split"], normalize=args["normalize"],
                       log=console.print)

    def build():
        from dataclasses import replace
        from autocompress.compress import apply

        recovery = args["recovery"]
        if record["metrics"].get("fidelity") == "screen":
            recovery = replace(recovery, finetune_steps=0)
        return apply(prep.model, prep.table, config, data=prep.data, recovery=recovery, seed=args["seed"])

    what = do_export(config, prep.table, fmt, out, model_builder=build)
    m = record["metrics"]
    console.print(f"trial {record['trial']} -> {out}: {what}")
    console.print(f"  accuracy {100 * m['accuracy']:.2f}% (drop {m['accuracy_drop']:.2f} pp), "
                  f"{m['size_bytes'] / 1e6:.2f} MB, energy reduction {m['energy_reduction']:.2f}x ({m['cost_origin']})")


@app.command()
def finetune(
    run_dir: Path = typer.Argument(..., help="a search's run directory"),
    pick: str = typer.Option("best", help="trial number, or best (highest energy reduction on the Pareto set)"),
    max_acc_drop: Optional[float] = typer.Option(None, help="with --pick best: largest accepted accuracy drop"),
    epochs: float = typer.Option(1.0, help="passes over the training split (fractions allowed)"),
    steps: Optional[int] = typer.Option(None, help="fine-tuning steps instead of --epochs"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate of the one-cycle schedule (default: the search's)"),
):
    """Train a chosen candidate to its final accuracy and measure it on the test split the search
    never saw; writes the model (TorchScript, QDQ ONNX) and its figures to RUN_DIR/finished/."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import autocompress.api as api
    from autocompress.finish import pick_record

    if epochs <= 0:
        raise UserError(f"--epochs must be above 0, not {epochs}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, not {steps}")
    pick_record(run_dir, pick, max_acc_drop)  # a bad run directory or pick fails before anything loads
    progress = Progress(TextColumn("fine-tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console)
    task = progress.add_task("finetune", total=1, loss="-")
    with progress:
        result = api.finetune(run_dir, pick, epochs=epochs, steps=steps, lr=lr, max_acc_drop=max_acc_drop,
                              log=console.print,
                              progress=lambda i, n, loss: progress.update(task, completed=i, total=n, loss=f"{loss:.3f}"))
    console.print(f"trial {result['trial']} finished: {result['training_images']:,} training images in "
                  f"{result['train_seconds']:.0f} s ({result['cpu']})")
    for split in ("val", "test"):
        if f"accuracy_{split}" not in result:
            continue
        se = result[f"accuracy_drop_se_{split}"]
        console.print(f"  {split}: {100 * result[f'accuracy_{split}']:.2f}% on {result[f'{split}_images']:,} images "
                      f"(uncompressed {100 * result[f'baseline_accuracy_{split}']:.2f}%, drop "
                      f"{result[f'accuracy_drop_{split}']:.2f} pp" + (f" +/- {se:.2f}, paired)" if se is not None else ")"))
    if "note" in result:
        console.print(f"  {result['note']}", style="yellow")
    console.print(f"  energy reduction {result['energy_reduction']:.2f}x ({result['cost_origin']}), "
                  f"{result['size_bytes'] / 1e6:.2f} MB modeled packed size")
    console.print(f"written: {result['path']} (result.json, config.yaml, model.pt, model.onnx)")


@app.command("sensitivity")
def sensitivity_cmd(
    model: str = typer.Option("resnet18", help="zoo name or module.path:callable"),
    weights: Optional[Path] = typer.Option(None, help="state dict; without it the cached baseline is used (or trained)"),
    data: str = typer.Option("digits", help="data set (as in the search)"),
    normalize: str = typer.Option("auto", help="auto, cifar10 or imagenet (as in the search)"),
    target: str = typer.Option("tpu-v1", help="hardware profile"),
    space: Optional[str] = typer.Option(None, help="search space name or YAML path (default: tuned for the model)"),
    samples: int = typer.Option(256, help="calibration images of the validation split"),
    as_json: bool = typer.Option(False, "--json", help="print the table as JSON"),
):
    """Damage of every value of every searchable knob alone (accuracy drop and KL to the
    uncompressed logits); cached, so a later --algorithm surrogate search reuses it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import autocompress.api as api
    from autocompress.search.sensitivity import sensitivity

    if samples < 1:
        raise UserError(f"--samples must be at least 1, not {samples}")
    prep = api.prepare(model, data, target, weights=str(weights) if weights else None, normalize=normalize,
                       log=console.print)
    bound, evaluator = prep.space(space), prep.evaluator()
    progress = Progress(TextColumn("sensitivity"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=as_json)
    task = progress.add_task("sensitivity", total=None)
    with progress:
        sens = sensitivity(bound, evaluator, samples=samples,
                           progress=lambda i, n: progress.update(task, completed=i, total=n))
    if as_json:
        print(json.dumps({"baseline_accuracy": sens.baseline_accuracy, "images": sens.images,
                          "seconds": sens.seconds, "cached": sens.cached,
                          "rows": sens.frame.to_dict(orient="records")}, indent=1))
        return
    table = Table(title=f"Sensitivity of {model} ({sens.images} images, baseline {100 * sens.baseline_accuracy:.2f}%)")
    for col in ("param", "value", "accuracy drop (pp)", "KL (nats)", "seconds"):
        table.add_column(col, justify="left" if col == "param" else "right")
    for _, r in sens.frame.sort_values(["param", "value"]).iterrows():
        table.add_row(str(r["param"]), f"{r['value']:g}", f"{r['accuracy_drop']:.2f}", f"{r['kl']:.4f}",
                      f"{r['seconds']:.1f}")
    console.print(table)
    console.print(("read from the cache" if sens.cached else f"measured in {sens.seconds:.0f} s and cached")
                  + "; autocompress search --algorithm surrogate reuses it")


@app.command("apply")
def apply_cmd(
    config: Path = typer.Option(..., help="a CompressionConfig (YAML or JSON), e.g. from autocompress export"),
    model: str = typer.Option("resnet18", help="zoo name or module.path:callable"),
    weights: Optional[Path] = typer.Option(None, help="state dict; without it the cached baseline is used (or trained)"),
    data: str = typer.Option("digits", help="data for batch-norm re-estimation and activation calibration"),
    target: str = typer.Option("tpu-v1", help="profile used to cost the result"),
    finetune_steps: int = typer.Option(0, help="fine-tuning steps with distillation (as in the search)"),
    seed: int = typer.Option(0),
    normalize: str = typer.Option("auto", help="auto (training-set statistics), cifar10 or imagenet (as in the search)"),
    val_samples: Optional[int] = typer.Option(None, help="evaluate on a fixed class-balanced subset of the validation split (as in the search)"),
    val_split: Optional[int] = typer.Option(None, help="training images held out as the validation split (as in the search)"),
    out: Path = typer.Option(..., help="file for the compressed model (TorchScript)"),
):
    """Re-create a compressed model from a config and save it."""
    import torch

    import autocompress.api as api
    from autocompress.compress import Recovery
    from autocompress.config import CompressionConfig
    from autocompress.export import save_model

    cfg = CompressionConfig.load(config)
    prep = api.prepare(model, data, target, weights=str(weights) if weights else None, normalize=normalize,
                       val_samples=val_samples, val_split=val_split, log=console.print)
    evaluator = prep.evaluator(Recovery(finetune_steps=finetune_steps), seed=seed)
    cfg = evaluator.complete(cfg)
    torch.manual_seed(seed)
    compressed = evaluator.build(cfg)  # built once: evaluated, then saved
    metrics = evaluator.evaluate(cfg, fidelity="full" if finetune_steps else "screen", compressed=compressed)
    what = save_model(compressed, torch_zeros(prep.table.input_shape), out)
    console.print(f"{out}: {what}")
    console.print(f"  accuracy {100 * metrics.accuracy:.2f}% (drop {metrics.accuracy_drop:.2f} pp), "
                  f"{metrics.size_bytes / 1e6:.2f} MB, energy {metrics.energy_mj:.4f} mJ, "
                  f"energy reduction {metrics.energy_reduction:.2f}x ({metrics.cost_origin})")


@app.command()
def calibrate(
    target: str = typer.Option("cpu-local", help="measured target: cpu-local[:threads=N,batch=N,runtime=...]"),
    model: str = typer.Option("resnet18", help="zoo name or module.path:callable whose variants are timed"),
    input_shape: str = typer.Option("3x32x32", help="input shape the variants are timed at"),
    num_classes: int = typer.Option(10, help="classifier outputs"),
    samples: int = typer.Option(24, help="random configs of the model's search space to time"),
    space: Optional[str] = typer.Option(None, help="search space the configs come from (default: tuned for the model)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(..., help="profile YAML to write (use it as --target FILE)"),
):
    """Time compressed variants of a model on this machine and fit a hardware profile to them."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import autocompress.api as api
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {str(out.parent)!r} does not exist")
    measured = api.check_calibration(target, samples)  # bad input fails before anything is built
    console.print(f"[bold]autocompress[/] calibrate: {samples} variants of {model} at {input_shape} on {measured.origin}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    task = progress.add_task("build and time", total=1)
    with progress:
        result = api.calibrate(model, measured, out=out, samples=samples, input_shape=input_shape,
                               num_classes=num_classes, space=space, seed=seed,
                               progress=lambda i, n: progress.update(task, completed=i, total=n))
    p = result.params
    console.print(f"fitted on {len(result.configs)} variants: fp32 {p['fp32_macs_per_s'] / 1e9:.1f} GMAC/s, int8 "
                  f"{p['int8_rate']:.2f}x, weights {p['weight_bandwidth'] / 1e9:.1f} GB/s, activations "
                  f"{p['activation_bandwidth'] / 1e9:.1f} GB/s, {p['layer_overhead_s'] * 1e6:.1f} us per layer, memory "
                  f"{'overlapping compute' if p['memory_overlap'] else 'after compute'}")
    console.print(f"in-sample fit: Spearman {result.spearman:.3f}, median abs error {result.median_abs_pct_error:.1f}%, "
                  f"RMS log error {100 * result.rms_log_error:.1f}%")
    console.print(f"{out}: use it with --target {out}")


def torch_zeros(shape):
    import torch
    return torch.zeros((1, *shape))


def main() -> None:
    try:
        app(standalone_mode=False)
    except UserError as e:
        _fail(f"error: {e}", 2)
    except NothingFeasible as e:
        _fail(f"nothing feasible: {e}", 3)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors: click's, or the copy of click that typer >= 0.29 vendors
        names = {cls.__name__ for cls in type(e).__mro__}
        if "ClickException" in names and hasattr(e, "show"):
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        if "Abort" in names:
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
