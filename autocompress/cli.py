"""Command line: ``autocompress search | report | profile | targets | calibrate | export | apply``. Thin:
parses, calls the API, prints.

Bad input ends in one line on stderr and exit code 2 (3 when a search finds nothing feasible).
"""
from __future__ import annotations

import json
import sys
import time
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from autocompress._errors import NothingFeasible, UserError

def _no_bool_metavar() -> None:
    """typer >= 0.29 prints a flag's type (``--help <bool>``): a flag takes no value, so show none."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - another typer
        return
    show = getattr(TyperOption, "display_type_rich", None)
    if show is None or getattr(show, "_autocompress", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else show(self, ctx)

    display_type_rich._autocompress = True
    TyperOption.display_type_rich = display_type_rich


_no_bool_metavar()
ALGORITHM_HELP = ("nsga2 (Optuna NSGA-II, the default), tpe, random (Optuna); pymoo-nsga2, pymoo-nsga3 (pymoo); "
                  "surrogate (an accuracy predictor fitted on a sensitivity pass proposes candidates over the cost model)")

# add_completion: typer's --install-completion / --show-completion (bash, zsh, fish, PowerShell)
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the best way to compress a neural network for a given piece of hardware.")


def installed_version() -> str:
    """The installed distribution's version (what pip shows, set in pyproject.toml); the
    package's own ``__version__`` when it runs from a tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autocompress")
    except PackageNotFoundError:
        from autocompress import __version__

        return __version__


def _version(value: bool) -> None:
    if value:
        print(f"autocompress {installed_version()}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Find the best way to compress a neural network for a given piece of hardware."""
console = Console(width=None if sys.stdout.isatty() else 160)


def _fail(message: str, code: int) -> None:
    print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the terminal width
    sys.exit(code)


def pareto_table(pareto, baseline: dict, origin: str, title: str, energy_origin: str | None = None,
                 wide: bool = False):
    """The Pareto set as printed when there is no report (the report's own table otherwise)."""
    from autocompress.report import pareto_rich_table

    origin_text = origin if (energy_origin or origin) == origin else f"latency {origin}, energy {energy_origin}"
    return pareto_rich_table(pareto, baseline, origin_text, title, wide=wide)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _left_estimate(records: list[dict], total: int, workers: int) -> str:
    """Time left from the trials' own measured durations (mean seconds of a trial x trials to
    go / trials at a time), not from the rate of the progress bar."""
    seconds = [float(r["seconds"]) for r in records if r.get("seconds") is not None and r.get("duplicate_of") is None]
    todo = max(0, total - len(records))
    if not seconds:
        return "-"
    if not todo:
        return "0:00:00"
    at_once = max(1, min(workers, todo))
    return "~" + _duration(sum(seconds) / len(seconds) * -(-todo // at_once))


#: search options a settings file cannot hold (a file describes a search, not which run to resume)
_NOT_IN_SEARCH_CONFIG = ("config_file", "resume")
#: nor does RUN/search.yaml: repeating a run must not write into the same run directory
_NOT_SAVED = (*_NOT_IN_SEARCH_CONFIG, "out")
SEARCH_CONFIG_FILE = "search.yaml"


def _config_keys(command) -> dict[str, str]:
    """Key of a settings file (a flag name, with - or _) -> the option's parameter name."""
    keys = {}
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or param.name in _NOT_IN_SEARCH_CONFIG:
            continue
        for spelling in (param.name, *param.opts):
            keys[spelling.lstrip("-").replace("-", "_")] = param.name
    return keys


def _flag_value(value):
    """A file's list or mapping as the flag writes it: [a, b] -> "a,b"; {cpu: 2} -> "cpu=2"."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return value


def read_search_config(path: Path, command) -> dict:
    """The settings of a ``--config`` file (YAML or JSON, capped in size like every input) by
    parameter name; an unknown key is one error line that lists the valid ones."""
    import yaml

    from autocompress._errors import unknown_name
    from autocompress.utils import read_input_text

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(read_input_text(path, "search settings"))  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"{path.name}: not valid YAML or JSON: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path.name}: expected a mapping of search flags (e.g. trials: 8), got {type(data).__name__}")
    keys = _config_keys(command)
    valid = sorted({p.opts[0].lstrip("-") for p in command.params if p.name in keys.values()})
    settings: dict = {}
    for key, value in data.items():
        name = keys.get(str(key).lstrip("-").replace("-", "_"))
        if name is None:
            raise UserError(f"{path.name}: {unknown_name('search setting', str(key).replace('_', '-'), valid)}")
        if name in settings:
            raise UserError(f"{path.name}: {key!r} is given twice (as - and _ spellings of one flag)")
        settings[name] = _flag_value(value)
    return settings


def _search_config(ctx: typer.Context, path: Optional[Path]) -> Optional[Path]:
    """--config FILE: its values become the defaults of the search's options (click's
    default_map), so a flag on the command line still wins and every value is checked and
    converted exactly as the flag's would be. Eager: it runs before the other options read theirs."""
    if path is not None and not ctx.resilient_parsing:  # resilient: shell completion, read nothing
        ctx.default_map = {**(ctx.default_map or {}), **read_search_config(path, ctx.command)}
    return path


def _as_saved(name: str, value):
    """A value for RUN/search.yaml that means the same from another working directory."""
    if isinstance(value, Path):
        return str(value.resolve())
    if name in ("space", "target") and isinstance(value, str) and Path(value).is_file():
        return str(Path(value).resolve())
    if name == "data" and isinstance(value, str) and ":" in value:
        kind, _, where = value.partition(":")
        if where and Path(where).exists():
            return f"{kind}:{Path(where).resolve()}"
    return value


def search_config_text(ctx: typer.Context) -> str:
    """RUN/search.yaml: every search flag as this run resolved it (command line over --config
    over the defaults; unset ones left out), keyed by flag name."""
    import yaml

    saved = {}
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if getattr(param, "param_type_name", "") == "option" and param.name not in _NOT_SAVED and value is not None:
            saved[param.opts[0].lstrip("-")] = _as_saved(param.name, value)
    return ("# the settings of this search (command line over --config over the defaults)\n"
            f"# repeat it: autocompress search --config {SEARCH_CONFIG_FILE} [--out NEW_RUN_DIR]; a flag given "
            "beside --config wins\n" + yaml.safe_dump(saved, sort_keys=False, allow_unicode=True))


@app.command()
def search(
    ctx: typer.Context,
    config_file: Optional[Path] = typer.Option(None, "--config", is_eager=True, callback=_search_config,
                                               help="YAML or JSON file of search flags (keys: the flag names, e.g. "
                                                    "trials: 8, max-acc-drop: 0.5); flags given here win. Each "
                                                    f"run saves its own as RUN_DIR/{SEARCH_CONFIG_FILE}"),
    model: str = typer.Option("resnet18", help="zoo name or module.path:callable"),
    target: str = typer.Option("tpu-v1", help="hardware profile name, path to a profile YAML, scalesim:FILE.cfg or "
                               "zigzag:FILE.yaml (another tool's hardware file), or a measured target: cpu-local "
                               "(options after a colon: threads=N, batch=N, "
                               "runtime=onnxruntime|torch; e.g. cpu-local:threads=2,batch=1) or cuda-local"),
    data: str = typer.Option("digits", help="digits (built in) or imagefolder:PATH"),
    weights: Optional[Path] = typer.Option(None, help="state dict to load; without it a baseline is trained and cached"),
    space: Optional[str] = typer.Option(None, help="search space name or YAML path (default: tuned for the model)"),
    trials: int = typer.Option(24, help="trial budget"),
    algorithm: str = typer.Option("nsga2", help=ALGORITHM_HELP),
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
    ray_address: Optional[str] = typer.Option(None, help="run the trials on an existing Ray cluster (default: $RAY_ADDRESS)"),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL for the run's study of every trial "
                                          "(default sqlite:///RUN/study.db; e.g. postgresql://... on a cluster)"),
    mlflow: Optional[str] = typer.Option(None, help="log the search to MLflow at this tracking URI as it runs "
                                         "(auto: $MLFLOW_TRACKING_URI or ./mlflow.db): a parent run, a child run "
                                         "per trial, the Pareto set, the report and the best model"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<model>-<target>-<time>)"),
    resume: Optional[Path] = typer.Option(None, help="continue a killed search from its run directory"),
    grid_gco2_kwh: Optional[float] = typer.Option(None, help="grid carbon intensity for the report (default: world average 475, IEA 2019)"),
    pue: Optional[float] = typer.Option(None, help="data-centre PUE for the report (default: 1.58, Uptime Institute 2023)"),
    country: Optional[str] = typer.Option(None, help="ISO 3166 alpha-3 code: the grid intensity of that country (codecarbon's data)"),
    wide: bool = typer.Option(False, "--wide", help="print every column of the Pareto table (SQNR, kWh, CO2e, GOPS/W); "
                              "report.html and pareto.csv have them all either way"),
):
    """Search compressions of a model for a target; print the Pareto set and write the report."""
    import autocompress.api as api
    from autocompress.compress import Recovery
    from autocompress.search import Constraints

    if resume is not None and config_file is not None:
        raise UserError("--resume takes the settings from the run directory; drop --config")
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
    from autocompress.carbon import carbon_settings
    from autocompress.hardware import load_target
    from autocompress.search import RunSettings, SearchSettings
    from autocompress.space import SearchSpace, load_space

    # every value is checked once, where it is built, and before the baseline is trained
    target_ = load_target(target)
    space_ = space if space is None or isinstance(space, SearchSpace) else load_space(space)
    objs = [o.strip() for o in objectives.split(",") if o.strip()]
    settings = SearchSettings(trials=trials, algorithm=algorithm, seed=seed, objectives=objs,
                              constraints=constraints, clip_range=clip)
    run_settings = RunSettings(workers=workers, cpus_per_trial=cpus, gpus_per_trial=gpus,
                               ray_address=ray_address, storage=storage)
    resolved = run_settings.resolved()  # what needs the machine (GPUs), also before the baseline
    carbon = carbon_settings(grid_gco2_kwh, pue, country)
    recovery = Recovery(finetune_steps=finetune_steps)
    t0 = time.time()
    console.print(f"[bold]autocompress[/] search: {model} on {target}, {trials} trials, {algorithm}")
    prep = _prepare_with_progress(partial(api.prepare, model, data, target, weights=str(weights) if weights else None,
                                          input_shape=input_shape, val_samples=val_samples, val_split=val_split,
                                          normalize=normalize))
    console.print(f"model: {prep.model_desc}; {len(prep.table)} layers, "
                  f"{prep.table.total_macs / 1e6:.1f} M MACs, {prep.table.total_params / 1e6:.2f} M parameters")
    for note in prep.notes:
        console.print(f"  {note}", style="dim")

    at_once = 1 if target_.measures_built_models and workers is None else resolved.workers
    progress = _TrialsProgress(trials, at_once)
    t_trials = time.time()
    try:
        with progress:
            if resume is not None:
                from autocompress.search import RunDirectory
                progress.resumed(RunDirectory(resume).trials())
            result = api.search(model, data=data, target=target, space=space_, settings=settings, run=run_settings,
                                carbon=carbon, country=country, recovery=recovery, metric=metric, mlflow=mlflow,
                                out=out, resume=resume, prepared=prep, log=console.print, on_trial=progress.on_trial,
                                run_files=None if resume is not None else {SEARCH_CONFIG_FILE: search_config_text(ctx)})
    except NothingFeasible as e:
        _print_result(e.result, prep.profile, time.time() - t_trials, t_trials - t0, wide=wide)
        raise
    except KeyboardInterrupt:
        run_dir = resume or _latest_run(out)
        _fail(f"interrupted; every finished trial is kept. Resume with: "
              f"autocompress search --resume {run_dir}", 130)
    _print_result(result, prep.profile, time.time() - t_trials, t_trials - t0, wide=wide)


class _TrialsProgress:
    """The search's progress: trials done, how many met every constraint, the best energy
    reduction among them and the time left; a plain line per trial when the output is a log."""

    def __init__(self, trials: int, at_once: int):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        from autocompress._progress import LoggedProgress

        self.trials, self.at_once = trials, at_once
        self.bar = LoggedProgress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("feasible {task.fields[feasible]}"),
                                  TextColumn("best feasible energy reduction {task.fields[best]}"),
                                  TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left {task.fields[left]}"),
                                  console=console, every=0)
        self.task = self.bar.add_task("search", total=trials, feasible=0, best="-", left="-")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def resumed(self, before: list[dict]) -> None:
        self.bar.update(self.task, completed=len(before), left=_left_estimate(before, self.trials, self.at_once))

    def on_trial(self, record: dict, records: list[dict]) -> None:
        ok = [r for r in records if r["status"] == "ok"]  # "ok": met every constraint
        best = max((r["metrics"]["energy_reduction"] for r in ok), default=None)
        self.bar.update(self.task, completed=len(records), feasible=len(ok),
                        best=f"{best:.2f}x" if best is not None else "-",
                        left=_left_estimate(records, self.trials, self.at_once))


def _prepare_with_progress(prepare):
    """``prepare(log=..., train_progress=...)`` (``api.prepare`` with its arguments bound, or a
    loaded run's ``SearchResult.prepare``) with a progress bar for the baseline's training
    (epochs and loss), which can take minutes on a busy machine."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from autocompress._progress import LoggedProgress  # plain lines when the output is a log
    from autocompress.baseline import BaselineTraining

    epochs = BaselineTraining().epochs
    bar = LoggedProgress(TextColumn("baseline training"), BarColumn(), TextColumn("epoch {task.fields[epoch]}"),
                         TextColumn("step {task.completed:.0f}/{task.total:.0f}"), TextColumn("loss {task.fields[loss]}"),
                         TextColumn("elapsed"), TimeElapsedColumn(), console=console, transient=True)
    task = None

    def on_step(step: int, steps: int, loss: float) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("baseline", total=steps, epoch=f"1/{epochs}", loss="-")
        epoch = min(epochs, 1 + (step - 1) * epochs // max(1, steps)) if step else 1
        bar.update(task, completed=step, epoch=f"{epoch}/{epochs}", loss=f"{loss:.3f}")

    try:
        return prepare(log=console.print, train_progress=on_step)
    finally:
        if task is not None:
            bar.stop()
            console.print(f"baseline trained: {epochs} epochs in {_duration(bar.tasks[0].elapsed or 0)}, "
                          f"final loss {bar.tasks[0].fields['loss']}")


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


def _print_result(result, target, seconds: float, prep_seconds: float | None = None, wide: bool = False) -> None:
    from autocompress.report import plural

    origin = target.origin
    energy_origin = getattr(target, "energy_origin", origin)
    failed = result.trials[result.trials["status"] == "failed"]
    screened = sum(1 for r in result.records if r.get("screened"))
    feasible = int((result.trials["status"] == "ok").sum())
    prep_text = f" (after {prep_seconds:.0f} s of preparation: data, baseline, tracing)" if prep_seconds is not None else ""
    console.print(f"\n{plural(len(result.trials), 'trial')} in {seconds:.0f} s{prep_text}: {feasible} feasible, "
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
                                   f"Pareto set ({plural(len(result.pareto), 'candidate')}, hypervolume "
                                   f"{result.hypervolume:.4f})", energy_origin, wide=wide))
        from autocompress.evaluate import origin_sentence

        console.print(origin_sentence(origin, energy_origin))
    else:
        from autocompress.report import build_report
        from autocompress.carbon import carbon_settings

        rep = build_report(result.run_dir, carbon=carbon_settings(stored=_stored_carbon(result.run_dir)))
        _print_report(rep, wide=wide)
    console.print(f"run directory: {result.run_dir}")


def _stored_carbon(run_dir) -> dict | None:
    from autocompress.search import RunDirectory
    return RunDirectory(run_dir).settings.get("carbon")


def _print_report(rep, wide: bool = False) -> None:
    console.print(rep.rich_table(wide=wide))
    for line in rep.summary_lines()[1:]:
        console.print(line)
    html_path = rep.run_dir / "report.html"
    if html_path.exists():
        pngs = ", ".join(p.name for p in sorted(rep.run_dir.glob("*.png")))
        console.print(f"report: {html_path} (plots: {pngs})")
    steps = rep.next_steps()
    if steps:
        console.print(f"next, for trial {rep.pick}:")
        for what, cmd in steps:
            console.print(f"  {cmd}", soft_wrap=True, highlight=False)


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
    wide: bool = typer.Option(False, "--wide", help="print every column of the Pareto table (SQNR, kWh, CO2e, GOPS/W)"),
):
    """Print the Pareto table and write report.html and its PNG plots into the run directory."""
    from autocompress.carbon import carbon_settings
    from autocompress.report import build_report

    from autocompress.search.rundir import RunDirectory

    RunDirectory.existing(run_dir)
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
    _print_report(rep, wide=wide)


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


class SchemaName(str, Enum):
    profile = "profile"
    space = "space"


@app.command("schema")
def schema_cmd(name: SchemaName = typer.Argument(..., help="profile (a hardware profile, --target FILE) or "
                                                            "space (a search space, --space FILE)")):
    """Print the JSON Schema of a hardware profile or search space file (for editors and CI checks)."""
    if name is SchemaName.profile:
        from autocompress.hardware.profile import HardwareProfile as model
    else:
        from autocompress.space import SearchSpace as model
    # pydantic writes draft 2020-12; saying so lets editors (YAML language servers) pick the validator
    print(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema()},
                     indent=1))


@app.command()
def profile(
    model: str = typer.Option("resnet18", help="zoo name or module.path:callable"),
    target: str = typer.Option("tpu-v1", help="hardware profile name or YAML path, scalesim:FILE.cfg or zigzag:FILE.yaml"),
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
    from rich import box

    t.box, t.pad_edge, t.padding = box.SIMPLE_HEAD, False, (0, 1, 0, 0)  # no vertical rules: full layer names in 100 columns
    for col in ("layer", "kind", "MACs", "params", "bits\nw/a", "latency\nms", "energy\nmJ", "util\n%", "on\nchip",
                "bound"):
        t.add_column(col, justify="left" if col in ("layer", "kind", "bound", "on\nchip") else "right", no_wrap=True)
    for _, r in frame.iterrows():
        # which of the layer's weights, inputs and outputs live on chip (the placement column: w/i/o on or off)
        on_chip = "".join(x for x, at in zip("wio", str(r.get("placement", "")).split("/")) if at == "on") or "-"
        t.add_row(r["layer"], r["kind"], f"{r['macs']:,}", f"{r['params']:,}", f"{r['wbits']}/{r['abits']}",
                  f"{r['latency_ms']:.4f}", f"{r['energy_mj']:.4f}", f"{100 * r['utilization']:.1f}", on_chip,
                  r["bound"])
    t.add_row("total", "", f"{totals['macs']:,}", f"{totals['params']:,}", "", f"{totals['latency_ms']:.4f}",
              f"{totals['energy_mj']:.4f}", "", "", "", style="bold")
    console.print(t)
    console.print("on chip: the layer's weights (w), inputs (i), outputs (o) that live on chip (--json names the levels)")
    for key, why in totals.get("assumed", {}).items():
        console.print(f"assumed {key}: {why}")
    console.print(f"{totals['macs'] / 1e9:.3f} GMACs, {totals['params'] / 1e6:.2f} M parameters "
                  f"(all parameters of the model); latency and energy {totals['origin']}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a search's run directory"),
    pick: str = typer.Option("best", help="trial number, or best (highest energy reduction on the Pareto set)"),
    max_acc_drop: Optional[float] = typer.Option(None, help="with --pick best: largest accepted accuracy drop"),
    fmt: str = typer.Option("yaml", "--format", help="json, yaml (the config), csv (per-layer table), torch "
                            "(TorchScript model, integer weights), onnx (QDQ ONNX model), ort-overrides (a float "
                            "ONNX graph and the quantize_static recipe that makes onnxruntime write the same "
                            "integers), nncf / inc (what NNCF / Intel Neural Compressor should quantise on the "
                            "float structure)"),
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
    result = api.load(run_dir)
    prep = _prepare_with_progress(result.prepare)
    what = do_export(config, prep.table, fmt, out, model_builder=lambda: result.apply(record["trial"]))
    from autocompress.report import prune_notes

    notes = prune_notes(prep.table, config)
    if fmt == "yaml" and notes:  # say why a layer's prune and its pruned channels differ (comments: the data is unchanged)
        from autocompress.utils import atomic_write_text

        lines = ["# Pruning is per channel group: layers joined by a residual add, a concatenation or a",
                 "# depthwise link share their output channels and are pruned together, so these layers",
                 "# lose more channels than their own 'prune' says:"]
        lines += [f"#   {name}: {note}" for name, note in notes.items()]
        atomic_write_text(out, out.read_text() + "\n".join(lines) + "\n")
    m = record["metrics"]
    console.print(f"trial {record['trial']} -> {out}: {what}")
    console.print(f"  accuracy {100 * m['accuracy']:.2f}% (drop {m['accuracy_drop']:.2f} pp), "
                  f"{m['size_bytes'] / 1e6:.2f} MB modeled packed size, energy reduction {m['energy_reduction']:.2f}x "
                  f"({m['cost_origin']})")
    if notes and fmt in ("yaml", "json", "csv"):
        console.print(f"  {plural_layers(len(notes))} pruned with their channel group, not by their own 'prune'"
                      + (" (see the comments at the end of the file)" if fmt == "yaml" else ""), style="dim")


@app.command()
def finetune(
    run_dir: Path = typer.Argument(..., help="a search's run directory"),
    pick: str = typer.Option("best", help="trial number, or best (highest energy reduction on the Pareto set)"),
    max_acc_drop: Optional[float] = typer.Option(None, help="with --pick best: largest accepted accuracy drop"),
    epochs: float = typer.Option(1.0, help="passes over the training split (fractions allowed)"),
    steps: Optional[int] = typer.Option(None, help="fine-tuning steps instead of --epochs"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate of the one-cycle schedule (default: the search's)"),
    race: int = typer.Option(1, help="race the pick against up to N-1 candidates that could still beat it "
                             "(more energy saved, a little beyond the limit) by successive halving over the "
                             "same steps; 1: no race"),
):
    """Train a chosen candidate to its final accuracy and measure it on the test split the search
    never saw; writes the model (TorchScript, QDQ ONNX) and its figures to RUN_DIR/finished/."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from autocompress._progress import LoggedProgress  # plain lines when the output is a log
    import autocompress.api as api
    from autocompress.finish import pick_record

    if epochs <= 0:
        raise UserError(f"--epochs must be above 0, not {epochs}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, not {steps}")
    if race < 1:
        raise UserError(f"--race must be at least 1 (no race), not {race}")
    pick_record(run_dir, pick, max_acc_drop)  # a bad run directory or pick fails before anything loads
    progress = LoggedProgress(TextColumn("fine-tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                              TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                              console=console)
    task = progress.add_task("finetune", total=1, loss="-")
    with progress:
        result = api.finetune(run_dir, pick, epochs=epochs, steps=steps, lr=lr, max_acc_drop=max_acc_drop,
                              race=race, log=console.print,
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
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from autocompress._progress import LoggedProgress  # plain lines when the output is a log
    import autocompress.api as api
    from autocompress.search.sensitivity import sensitivity

    if samples < 1:
        raise UserError(f"--samples must be at least 1, not {samples}")
    prep = _prepare_with_progress(partial(api.prepare, model, data, target, weights=str(weights) if weights else None,
                                          normalize=normalize))
    bound, evaluator = prep.space(space), prep.evaluator()
    progress = LoggedProgress(TextColumn("sensitivity"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
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
    config: Optional[Path] = typer.Option(None, help="a CompressionConfig (YAML or JSON), e.g. from autocompress "
                                                     "export; or give --run and --pick instead"),
    run: Optional[Path] = typer.Option(None, "--run", help="a search's run directory: re-create its trial --pick "
                                       "with the run's own model, weights, data settings (normalisation, "
                                       "validation split and subset), recovery and seed, so the figures match its record"),
    pick: str = typer.Option("best", help="with --run: trial number, or best (highest energy reduction on the Pareto set)"),
    model: Optional[str] = typer.Option(None, help="zoo name or module.path:callable (default: resnet18; with --run: the run's)"),
    weights: Optional[Path] = typer.Option(None, help="state dict; without it the cached baseline is used (or trained)"),
    data: Optional[str] = typer.Option(None, help="data for batch-norm re-estimation, activation calibration and the "
                                                  "accuracy (default: digits; with --run: the run's)"),
    target: Optional[str] = typer.Option(None, help="profile used to cost the result (default: tpu-v1; with --run: the run's)"),
    finetune_steps: Optional[int] = typer.Option(None, help="fine-tuning steps with distillation, as in the search "
                                                            "(default: 0; with --run: the trial's)"),
    seed: Optional[int] = typer.Option(None, help="seed of the recovery (default: 0; with --run: the run's)"),
    normalize: Optional[str] = typer.Option(None, help="auto (training-set statistics), cifar10 or imagenet, as in the "
                                                       "search (default: auto; with --run: the run's)"),
    val_samples: Optional[int] = typer.Option(None, help="evaluate on a fixed class-balanced subset of the validation "
                                                         "split, as in the search (with --run: the run's)"),
    val_split: Optional[int] = typer.Option(None, help="training images held out as the validation split, as in the "
                                                       "search (with --run: the run's)"),
    out: Path = typer.Option(..., help="file for the compressed model (TorchScript)"),
):
    """Re-create a compressed model from a config, or a trial of a run directory (--run, --pick),
    measure it as the search did and save it; it is built once."""
    given = {"--model": model, "--weights": weights, "--data": data, "--target": target,
             "--finetune-steps": finetune_steps, "--seed": seed, "--normalize": normalize,
             "--val-samples": val_samples, "--val-split": val_split}
    if run is None and config is None:
        raise UserError("give --config FILE, or --run RUN_DIR --pick TRIAL")
    if run is not None:
        if config is not None:
            raise UserError("give --config or --run, not both")
        clash = [k for k, v in given.items() if v is not None]
        if clash:
            raise UserError(f"--run takes the model, data and settings from the run directory; drop {clash[0]}")
        from autocompress.finish import pick_record

        record = pick_record(run, pick)  # a bad run directory or pick fails before anything loads
    elif pick != "best":
        raise UserError("--pick goes with --run")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {str(out.parent)!r} does not exist")

    import autocompress.api as api
    from autocompress.compress import Recovery
    from autocompress.config import CompressionConfig
    from autocompress.export import save_model

    if run is not None:
        result = api.load(run)
        prep = _prepare_with_progress(result.prepare)  # one line for a run that searched a Python nn.Module
        compressed, metrics = result.rebuild(record["trial"])  # built once, as the search built it
    else:
        cfg = CompressionConfig.load(config)  # a bad file fails before anything is trained
        prep = _prepare_with_progress(partial(api.prepare, model or "resnet18", data or "digits", target or "tpu-v1",
                                              weights=str(weights) if weights else None, normalize=normalize or "auto",
                                              val_samples=val_samples, val_split=val_split))
        recovery = Recovery(finetune_steps=finetune_steps or 0)
        evaluator = prep.evaluator(recovery, "top1", seed=seed or 0)
        compressed, metrics = evaluator.built(evaluator.complete(cfg),
                                              fidelity="full" if recovery.finetune_steps else "screen")
        record = None
    what = save_model(compressed, torch_zeros(prep.table.input_shape), out)
    console.print(f"{out}: {what}" + (f" (trial {record['trial']} of {run})" if record else ""))
    console.print(f"  accuracy {100 * metrics.accuracy:.2f}% (drop {metrics.accuracy_drop:.2f} pp), "
                  f"energy {metrics.energy_mj:.4f} mJ, energy reduction {metrics.energy_reduction:.2f}x "
                  f"({metrics.cost_origin})")
    console.print(f"  size: {metrics.size_bytes / 1e6:.2f} MB modeled packed size (weights at their bit-widths plus "
                  f"scales, what the target stores); the file is {out.stat().st_size / 1e6:.2f} MB "
                  f"(TorchScript keeps quantised weights as packed integers and per-channel scales; biases, "
                  f"batch norm and float layers stay fp32)")
    if record is not None:
        m = record.get("metrics") or {}
        same = m.get("accuracy") is not None and abs(m["accuracy"] - metrics.accuracy) < 1e-9
        console.print(f"  the search recorded {100 * m['accuracy']:.2f}% (drop {m['accuracy_drop']:.2f} pp) for trial "
                      f"{record['trial']}: " + ("reproduced" if same else "NOT reproduced (another torch, "
                                                 "machine or data cache?)"), style=None if same else "yellow")


@app.command()
def calibrate(
    target: str = typer.Option("cpu-local", help="measured target: cpu-local[:threads=N,batch=N,runtime=...]"),
    model: str = typer.Option("resnet18", help="zoo name or module.path:callable whose variants are timed"),
    input_shape: str = typer.Option("3x32x32", help="input shape the variants are timed at"),
    num_classes: int = typer.Option(10, help="classifier outputs"),
    samples: int = typer.Option(24, help="random configs of the model's search space to time"),
    space: Optional[str] = typer.Option(None, help="search space the configs come from (default: tuned for the model)"),
    seed: int = typer.Option(0, help="seed of the random configs"),
    out: Path = typer.Option(..., help="profile YAML to write (use it as --target FILE)"),
):
    """Time compressed variants of a model on this machine and fit a hardware profile to them."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from autocompress._progress import LoggedProgress  # plain lines when the output is a log
    import autocompress.api as api
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {str(out.parent)!r} does not exist")
    measured = api.check_calibration(target, samples)  # bad input fails before anything is built
    console.print(f"[bold]autocompress[/] calibrate: {samples} variants of {model} at {input_shape} on {measured.origin}")
    progress = LoggedProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
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


def plural_layers(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


def torch_zeros(shape):
    import torch
    return torch.zeros((1, *shape))


def _click_classes(name: str) -> tuple[type, ...]:
    """click's exception class ``name`` and its copy in typer >= 0.29 (``typer._click``), where
    each exists: the app raises the copy's, an older typer (or a click-based plug-in) click's."""
    from importlib import import_module

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _usage_line(error, argv: list[str]) -> str:
    """A usage error as one line (click prints usage, a hint and the error on four)."""
    ctx = getattr(error, "ctx", None)
    path = getattr(ctx, "command_path", "") if ctx is not None else ""
    if not path:  # typer's own parser raises some errors without a context: the command from argv
        commands = typer.main.get_command(app).commands
        path = " ".join(["autocompress", *[a for a in argv if a in commands][:1]])
    message = " ".join(error.format_message().split())
    return f"error: {message.rstrip('.')}; try: {path} --help"


def main() -> None:
    try:
        # prog_name: usage lines and the completion variable (_AUTOCOMPRESS_COMPLETE) say
        # "autocompress" however it was started (the script, python -m autocompress)
        app(prog_name="autocompress", standalone_mode=False)
    except UserError as e:
        _fail(f"error: {e}", 2)
    except NothingFeasible as e:
        _fail(f"nothing feasible: {e}", 3)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors: click's, or the copy of click that typer >= 0.29 vendors
        if isinstance(e, _click_classes("NoArgsIsHelpError")):
            e.show()  # bare `autocompress`: the help text, as no_args_is_help asks
            sys.exit(2)
        if isinstance(e, _click_classes("ClickException")):
            _fail(_usage_line(e, sys.argv[1:]), 2)  # bad input, like a UserError
        if isinstance(e, _click_classes("Abort")):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
