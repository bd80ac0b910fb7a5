"""The Python API: :func:`search`, :func:`compress`, :func:`profile`, :func:`load_target`,
:func:`calibrate`, :func:`export_onnx`.

Everything the CLI does goes through here, so a pipeline gets the same behaviour::

    import autocompress
    result = autocompress.search("resnet18", target="tpu-v1", trials=16)
    print(result.pareto)                       # a pandas DataFrame
    model = result.apply(result.best()["trial"])   # the compressed nn.Module
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd
import torch
from torch import nn

from autocompress._errors import NothingFeasible, UserError
from autocompress.baseline import BaselineTraining, cached_or_trained
from autocompress.compress import Recovery, apply
from autocompress.config import CompressionConfig
from autocompress.data import DataBundle, from_torch, resolve_data
from autocompress.evaluate import Evaluator, Metrics
from autocompress.graph import LayerTable, trace
from autocompress.hardware import MeasuredTarget, Target, load_target
from autocompress.models import build_model, load_weights
from autocompress.search import (Constraints, Problem, RunDirectory, RunSettings, SearchSettings,
                                 reference_point, run_search, settings_dict)
from autocompress.search.record import Trial
from autocompress.search.rundir import best_of, pareto_of, trials_frame
from autocompress.space import BoundSpace, default_space_for, load_space

if TYPE_CHECKING:
    from autocompress.carbon import CarbonSettings

__all__ = ["search", "finetune", "compress", "profile", "load_target", "prepare", "Prepared", "SearchResult",
           "Constraints", "Recovery", "SearchSettings", "RunSettings", "calibrate", "export_onnx"]


def _parse_shape(shape) -> tuple[int, ...] | None:
    if shape is None or isinstance(shape, tuple):
        return shape
    try:
        dims = tuple(int(x) for x in str(shape).lower().split("x"))
    except ValueError:
        raise UserError(f"input shape {shape!r} must look like 3x32x32") from None
    if not dims or any(d <= 0 for d in dims):
        raise UserError(f"input shape {shape!r} must have positive dimensions, e.g. 3x32x32")
    return dims


@dataclass
class Prepared:
    """A model, its data and its target, resolved and traced: what every command starts from."""

    model: nn.Module
    model_desc: str
    data: DataBundle | None
    table: LayerTable
    profile: Target
    inputs: dict  # the user's inputs as plain data (for settings.json and resume)
    notes: list[str] = field(default_factory=list)

    def evaluator(self, recovery: Recovery = Recovery(), metric: str = "top1", seed: int = 0) -> Evaluator:
        if self.data is None:
            raise UserError("this needs data (--data)")
        # the test split stays here: a search never sees it (and its workers need not hold it)
        return Evaluator(self.model, self.table, self.data.without_test(), self.profile, recovery=recovery,
                         metric=metric, seed=seed)

    def space(self, spec=None) -> BoundSpace:
        """Bind a search space (name, path or SearchSpace; default: tuned for the model)."""
        from autocompress.space import SearchSpace

        space = spec if isinstance(spec, SearchSpace) else load_space(spec or default_space_for(self.inputs.get("model", "")))
        return space.bind(self.table).restrict_to(self.profile)


def prepare(model: str | nn.Module = "resnet18", data: str | None = "digits",
            target: str | Target = "tpu-v1", *,
            weights: str | None = None, train_data=None, val_data=None, test_data=None,
            num_classes: int | None = None, input_shape=None, stem: str | None = None,
            val_samples: int | None = None, val_split: int | None = None, normalize: str = "auto",
            baseline: BaselineTraining | None = BaselineTraining(),
            log: Callable[[str], None] = print,
            train_progress: Callable[[int, int, float], None] | None = None) -> Prepared:
    """Resolve a model (zoo name, ``module:callable`` or nn.Module), data and target, load or
    train the baseline weights, and trace the LayerTable.

    A named data set gets a validation split of ``val_split`` class-balanced training samples
    (default: 20%, at most 5,000) that the search decides on; its own held-out split becomes the
    test split that only finished models are reported on. User Datasets keep the split given:
    ``val_data`` is decided on, ``test_data`` (optional) reported on. ``train_progress(step,
    steps, loss)`` hears from every step of a baseline's training."""
    profile_ = load_target(target)
    notes: list[str] = []
    bundle = None
    if train_data is not None or val_data is not None:
        if train_data is None or val_data is None:
            raise UserError("give both train_data and val_data")
        bundle = from_torch(train_data, val_data, test_data, num_classes=num_classes)
    elif data is not None:
        bundle = resolve_data(data, normalize=normalize, val_split=val_split, log=log)
    if bundle is not None:
        bundle = bundle.subset_val(val_samples)
        notes += bundle.notes
    shape = _parse_shape(input_shape) or (bundle.input_shape if bundle else None)
    if shape is None:
        raise UserError("give --input-shape (e.g. 3x32x32) or --data")
    if bundle is not None and input_shape is not None and tuple(shape) != bundle.input_shape:
        raise UserError(f"--input-shape {'x'.join(map(str, shape))} does not match the data's "
                        f"{'x'.join(map(str, bundle.input_shape))}")
    classes = num_classes or (bundle.num_classes if bundle else 1000)
    if isinstance(model, nn.Module):
        net, desc = model, f"{type(model).__name__} (user model)"
        spec = desc
    else:
        spec = str(model)
        torch.manual_seed(baseline.seed if baseline else 0)  # the initial weights, too, are repeatable
        net, desc = build_model(spec, num_classes=classes, input_shape=shape, stem=stem)
    table = trace(net, torch.zeros((1, *shape)))  # shapes only: also checks the forward pass first
    if weights:
        load_weights(net, weights)
        notes.append(f"weights: {weights}")
    elif not isinstance(model, nn.Module) and bundle is not None and baseline is not None:
        net, line = cached_or_trained(net, desc, bundle, baseline, log=log, progress=train_progress)
        notes.append(line)
    net.eval()
    notes += table.notes
    inputs = {"model": spec, "model_desc": desc, "data": bundle.name if bundle else None,
              "data_spec": data if bundle is not None and train_data is None else None,
              "target_spec": str(target) if isinstance(target, (str, Path)) else profile_.spec,
              "data_fingerprint": bundle.fingerprint if bundle else None, "target": profile_.name,
              "weights": str(weights) if weights else None, "input_shape": list(shape),
              "num_classes": classes, "stem": stem, "val_samples": val_samples, "val_split": val_split, "normalize": normalize,
              "baseline_training": asdict(baseline) if baseline else None}
    return Prepared(net, desc, bundle, table, profile_, inputs, notes)


# --------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    run_dir: Path
    trials: pd.DataFrame
    pareto: pd.DataFrame
    hypervolume: float
    baseline: dict
    records: list[dict]
    prepared: Prepared | None = None
    recovery: Recovery = Recovery()
    seed: int = 0
    metric: str = "top1"
    report_path: Path | None = None

    def record(self, trial) -> Trial:
        """Trial ``trial``'s record (typed: :class:`~autocompress.search.record.Trial`)."""
        number = self._trial(trial)
        found = next((r for r in self.records if int(r["trial"]) == number), None)
        if found is None:
            raise UserError(f"this run has no trial {number}")
        return Trial.of(found)

    def _trial(self, candidate) -> int:
        """A trial number from an int, a Pareto row (``best()``) or ``"best"``."""
        if isinstance(candidate, str) and candidate == "best":
            return int(self.best()["trial"])
        if isinstance(candidate, (pd.Series, dict)):
            return int(candidate["trial"])
        try:
            return int(candidate)
        except (TypeError, ValueError):
            raise UserError(f"a candidate is a trial number, a Pareto row or 'best', not {candidate!r}") from None

    def config(self, trial) -> CompressionConfig:
        trial = self._trial(trial)
        for r in self.records:
            if int(r["trial"]) == int(trial) and r.get("config"):
                return CompressionConfig.from_dict(r["config"])
        raise UserError(f"no trial {trial} with a config in {self.run_dir}")

    def best(self, max_acc_drop: float | None = None, objective: str = "energy_reduction") -> pd.Series:
        """The Pareto candidate with the best ``objective`` within an accuracy-drop limit."""
        best = best_of(self.pareto, max_acc_drop, objective)
        if best is None:
            raise NothingFeasible("no Pareto candidate meets that limit")
        return best

    def apply(self, trial, model: nn.Module | None = None, *, structure_only: bool = False) -> nn.Module:
        """Build the compressed model of ``trial`` (from the searched model by default), with
        the recovery that trial's metrics were measured after. ``apply(model, candidate)``
        works too; a candidate is a trial number, a Pareto row or ``"best"``. ``structure_only``:
        pruning, ranks and dropped blocks in float, for a tool that quantises itself
        (:mod:`autocompress.peer`)."""
        from dataclasses import replace

        if isinstance(trial, nn.Module):  # apply(model, candidate)
            trial, model = (model if model is not None else "best"), trial
        trial = self._trial(trial)
        prep = self.prepare()  # the LayerTable and the data for recovery are the search's
        base = model if model is not None else prep.model
        record = self.record(trial)
        recovery = self.recovery
        if record.screened_only:
            recovery = replace(recovery, finetune_steps=0)
        config = self.config(trial)
        if structure_only:
            from autocompress.peer import float_structure

            config = float_structure(config)
        return apply(base, prep.table, config, data=prep.data, recovery=recovery, seed=self.seed)

    def prepare(self, log: Callable[[str], None] = lambda s: None, train_progress=None) -> Prepared:
        """The searched model, data and target: the search's own, or (for :func:`load`) rebuilt
        from the run directory's settings the first time they are needed (``log`` and
        ``train_progress`` as for :func:`prepare`)."""
        if self.prepared is None:
            args = resume_arguments(self.run_dir)
            if str(args["model"]).endswith("(user model)"):
                raise UserError(f"{self.run_dir} searched a Python nn.Module, which cannot be rebuilt from the run "
                                f"directory: use the SearchResult that search() returned, or apply an exported config to the "
                                f"model (autocompress apply --config FILE --model module:callable)")
            self.prepared = prepare(args["model"], args["data"], args["target"], weights=args["weights"],
                                    val_samples=args["val_samples"], val_split=args["val_split"],
                                    normalize=args["normalize"], log=log, train_progress=train_progress)
        return self.prepared

    def export(self, candidate="best", fmt: str = "yaml", path: str | Path | None = None) -> Path:
        """Write ``candidate`` (trial number, Pareto row or ``"best"``) as ``fmt``: yaml / json
        (its CompressionConfig), csv (per-layer table) or torch (the compressed model)."""
        from autocompress.export import FORMATS, export as do_export

        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        trial = self._trial(candidate)
        suffix = {"torch": "pt", "ort-overrides": "json", "nncf": "json", "inc": "json"}.get(fmt, fmt)
        path = Path(path) if path is not None else self.run_dir / f"trial{trial}.{suffix}"
        table = self.prepared.table if self.prepared is not None else RunDirectory(self.run_dir).layers()[0]
        do_export(self.config(trial), table, fmt, path, model_builder=lambda: self.apply(trial))
        return path

    def report(self, pick=None, *, grid_gco2_kwh: float | None = None, pue: float | None = None,
               country: str | None = None, queries: float | None = None) -> Path:
        """Write report.html and its PNG plots into the run directory; returns the HTML path."""
        from autocompress.carbon import carbon_settings
        from autocompress.report import build_report

        stored = RunDirectory(self.run_dir).settings.get("carbon")
        carbon = carbon_settings(grid_gco2_kwh, pue, country, queries, stored=stored)
        rep = build_report(self.run_dir, pick=None if pick is None else self._trial(pick), carbon=carbon)
        self.report_path = rep.write()
        return self.report_path

    def finetune(self, pick="best", *, epochs: float = 1.0, steps: int | None = None, lr: float | None = None,
                 max_acc_drop: float | None = None, race: int = 1, log: Callable[[str], None] = print,
                 progress=None) -> dict:
        """Train the chosen candidate to its final accuracy (quantisation-aware, with
        distillation), measure it on the whole test split and write it with its figures to
        ``run_dir/finished/trial<N>/``; returns those figures. See :func:`finetune`."""
        if self.prepared is None:
            return finetune(self.run_dir, pick, epochs=epochs, steps=steps, lr=lr, max_acc_drop=max_acc_drop,
                            race=race, log=log, progress=progress)
        from autocompress.finish import finish, pick_record

        record = pick_record(self.run_dir, self._trial(pick) if pick != "best" else "best", max_acc_drop)
        return finish(self.prepared, self.run_dir, record, self.recovery, epochs=epochs, steps=steps, lr=lr,
                      seed=self.seed, race=race, max_acc_drop=max_acc_drop, progress=progress, log=log)

    def reproduce(self, trial: int) -> Metrics:
        """Re-evaluate ``trial`` from its saved config (same data, seed, fidelity and threads)."""
        return self.rebuild(trial)[1]

    def rebuild(self, trial) -> tuple[nn.Module, Metrics]:
        """Build ``trial``'s compressed model once as the search did (its config, recovery and
        fidelity, the run's seed, the thread count it ran with: reductions depend on it) and
        measure it: ``(model, metrics)``, the metrics comparable with the trial's record."""
        record = self.record(trial)
        prep = self.prepare()
        threads = torch.get_num_threads()
        torch.set_num_threads(int(record.get("threads") or threads))
        try:
            evaluator = prep.evaluator(self.recovery, self.metric, self.seed)
            return evaluator.built(self.config(record.number), fidelity=record.fidelity or "full")
        finally:
            torch.set_num_threads(threads)


def load(run_dir: str | Path) -> SearchResult:
    """The result of the search in ``run_dir`` (finished or interrupted), as :func:`search`
    returned it: trials, Pareto set, hypervolume, baseline. ``apply``, ``export``, ``finetune``
    and ``reproduce`` rebuild the searched model and data from the run's settings when first
    needed (a searched Python ``nn.Module`` cannot be rebuilt: ``apply(trial, model)`` takes it)."""
    rd = RunDirectory.existing(run_dir)  # one line if it is not a run directory
    args = resume_arguments(run_dir)
    front = rd.front()
    report = rd.path / "report.html"
    return SearchResult(rd.path, front.trials, front.pareto, front.hypervolume, rd.baseline, front.records, None,
                        args["recovery"], args["seed"],
                        args["metric"], report_path=report if report.is_file() else None)


def finetune(run_dir: str | Path, pick="best", *, epochs: float = 1.0, steps: int | None = None,
             lr: float | None = None, max_acc_drop: float | None = None, race: int = 1,
             log: Callable[[str], None] = print, progress=None) -> dict:
    """The finishing step for a run directory: rebuild the searched model and data from its
    settings, fine-tune candidate ``pick`` (a trial number, or ``"best"``: the highest energy
    reduction on the Pareto set within ``max_acc_drop``) for ``epochs`` over the training split
    (or ``steps``), and report it on the test split the search never saw. Returns the figures
    written to ``run_dir/finished/trial<N>/result.json`` (with the TorchScript and ONNX models).

    ``race`` > 1: the pick and up to ``race`` - 1 candidates that could still beat it share the
    steps by constraint-aware successive halving; the one left is finished (see
    :func:`autocompress.finish.finish`)."""
    from autocompress.finish import finish, pick_record

    record = pick_record(run_dir, pick, max_acc_drop)  # a bad pick fails before anything is loaded
    result = load(run_dir)
    return finish(result.prepare(log), run_dir, record, result.recovery, epochs=epochs, steps=steps, lr=lr,
                  seed=result.seed, race=race, max_acc_drop=max_acc_drop, progress=progress, log=log)


def resume_arguments(run_dir: str | Path) -> dict:
    """The keyword arguments of :func:`search` that a run directory was made with."""
    old = RunDirectory.existing(run_dir).settings
    inp, s = old["inputs"], old["search"]
    from autocompress.space import SearchSpace

    return dict(model=inp["model"], data=inp.get("data_spec") or inp["data"], target=inp["target_spec"],
                weights=inp.get("weights"), space=SearchSpace.model_validate(old["space"]),
                objectives=s["objectives"], constraints=Constraints(**s["constraints"]), trials=s["trials"],
                algorithm=s["algorithm"], seed=s["seed"], recovery=Recovery(**old["recovery"]),
                metric=old["metric"], val_samples=inp.get("val_samples"), val_split=inp.get("val_split"),
                normalize=inp.get("normalize", "auto"),
                clip_range=s.get("clip_range"), storage=(old.get("run") or {}).get("storage"))


def _fingerprint(prep: Prepared, space: BoundSpace, search_: SearchSettings, recovery: Recovery, metric: str) -> str:
    blob = json.dumps({"inputs": {k: v for k, v in prep.inputs.items() if k != "weights"},
                       "params": [p.name for p in space.params], "objectives": search_.objectives,
                       "constraints": asdict(search_.constraints), "recovery": asdict(recovery),
                       "metric": metric, "algorithm": search_.algorithm, "seed": search_.seed,
                       "clip_range": search_.clip_range},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def search(model: str | nn.Module = "resnet18", train_data=None, val_data=None, test_data=None, *,
           data: str | None = "digits", val_split: int | None = None,
           target: str | Target = "tpu-v1", space: str | None = None,
           objectives: list[str] | dict | None = None, constraints: Constraints | dict | None = None,
           trials: int = 32, algorithm: str = "nsga2", seed: int = 0, weights: str | None = None,
           recovery: Recovery | None = None, metric: str = "top1", val_samples: int | None = None,
           normalize: str = "auto", input_shape=None, num_classes: int | None = None,
           clip_range: tuple[float, float] | None = None,
           workers: int | None = None, cpus_per_trial: float | None = None, gpus_per_trial: float = 0,
           ray_address: str | None = None, storage: str | None = None,
           out: str | Path | None = None, resume: str | Path | None = None,
           log: Callable[[str], None] = print, on_trial: Callable[[dict, list[dict]], None] | None = None,
           prepared: Prepared | None = None, raise_if_infeasible: bool = True,
           grid_gco2_kwh: float | None = None, pue: float | None = None, country: str | None = None,
           measure_energy: bool = True, report: bool = True, mlflow: str | bool | None = None,
           run_files: dict[str, str] | None = None, settings: SearchSettings | None = None,
           run: RunSettings | None = None, carbon: CarbonSettings | None = None) -> SearchResult:
    """Search the compressions of ``model`` for ``target``; returns the trials and Pareto set.

    ``model`` is a zoo name, ``module:callable`` or an nn.Module (used as trained); data is
    ``data`` (a name) or ``train_data``/``val_data`` (torch Datasets or DataLoaders). No global
    state is kept: calling it twice in one process is safe.

    ``grid_gco2_kwh`` / ``country`` and ``pue`` set the report's carbon figures (defaults: the
    world-average grid and the industry-average PUE, see :mod:`autocompress.carbon`);
    ``storage``: an Optuna storage URL for the run's study (default ``sqlite:///RUN/study.db``),
    which holds every trial whatever the algorithm; ``ray_address`` defaults to ``$RAY_ADDRESS``.
    ``mlflow`` (a tracking URI, or True / "auto" for $MLFLOW_TRACKING_URI or ./mlflow.db) logs
    the search to MLflow as it runs (:mod:`autocompress.tracking`).
    ``measure_energy`` tracks the search's own energy (codecarbon); ``report`` writes
    report.html and its plots into the run directory at the end. ``run_files`` (name -> text) are
    written into a new run directory beside settings.json (the CLI's search.yaml).

    ``settings`` (what to search) and ``run`` (how to run it), as Ray Tune's TuneConfig and
    RunConfig: where given, they stand for the keywords they hold (trials, algorithm, seed,
    objectives, constraints, clip_range; workers, cpus_per_trial, gpus_per_trial, ray_address,
    storage), which are sugar for building them; ``carbon`` likewise stands for
    ``grid_gco2_kwh`` and ``pue`` (``country`` still names where the search's own energy is
    spent). Each is checked where it is built, once.
    """
    from autocompress.carbon import carbon_settings
    from autocompress.search_energy import SearchEnergyMeter

    if metric not in ("top1", "top5", "macro_f1"):
        raise UserError(f"unknown metric {metric!r}; valid: top1, top5, macro_f1")
    search_ = settings or SearchSettings(trials=trials, algorithm=algorithm, seed=seed, objectives=objectives,
                                         constraints=constraints, clip_range=clip_range)
    trials, objectives, constraints, seed = search_.trials, search_.objectives, search_.constraints, search_.seed
    if run is None:
        run = RunSettings(workers=workers, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          ray_address=ray_address, storage=storage)
    if run.workers is None and (prepared.profile if prepared else load_target(target)).measures_built_models:
        run = replace(run, workers=1)  # trials timed side by side on one machine would slow each other down
    if resume is not None and run.storage is None and (Path(resume) / "settings.json").is_file():
        run = replace(run, storage=(json.loads((Path(resume) / "settings.json").read_text()).get("run") or {}).get("storage"))
    run_ = run
    recovery = recovery or Recovery()
    carbon = carbon or carbon_settings(grid_gco2_kwh, pue, country)  # checked before anything is trained
    if isinstance(space, (str, Path)):
        space = load_space(space)  # a bad space fails before anything is trained
    if mlflow:
        try:
            import mlflow as _  # noqa: F401
        except ImportError:
            raise UserError("mlflow= needs MLflow: pip install 'autocompress[mlflow]'") from None
    if resume is not None:
        rundir = RunDirectory.existing(resume)
    prep = prepared or prepare(model, data, target, weights=weights, train_data=train_data, val_data=val_data,
                               test_data=test_data, num_classes=num_classes, input_shape=input_shape,
                               val_samples=val_samples, val_split=val_split, normalize=normalize, log=log)
    bound = prep.space(space).restrict_bits(constraints.min_bits, constraints.max_bits)
    if search_.clip_range is not None:
        bound = replace(bound, clip_range=search_.clip_range)
    for note in bound.notes:
        log(f"note: {note}")
    evaluator = prep.evaluator(recovery, metric, seed)
    problem = Problem(bound, evaluator, objectives, constraints)
    fingerprint = _fingerprint(prep, bound, search_, recovery, metric)
    if resume is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model_name = str(prep.inputs["model"]).split(":")[-1].split(" ")[0]
        rundir = RunDirectory(out or Path("runs") / f"{model_name}-{prep.profile.name}-{stamp}")
    with rundir.lock():  # one search writes a run directory at a time
        if resume is not None:
            torn = rundir.set_aside_torn_line()
            if torn:
                log(f"note: {torn}")
            old = rundir.settings
            if old.get("fingerprint") != fingerprint:
                raise UserError(f"{resume} belongs to another search ({old.get('inputs', {}).get('model')} on "
                                f"{old.get('inputs', {}).get('target')}, other settings); start a new run with --out")
            done = len(rundir.trials())
            log(f"Resuming {rundir.path}: {done} trial(s) already done, {max(0, trials - done)} to go.")
        else:
            if (rundir.path / "trials.jsonl").exists():
                raise UserError(f"{rundir.path} already holds a search; resume it with --resume or choose another --out")
            baseline = evaluator.baseline_metrics().to_dict()
            saved = {"fingerprint": fingerprint, "inputs": prep.inputs, "space": bound.space.model_dump(),
                        "space_params": [p.name for p in bound.params], "recovery": asdict(recovery),
                        "metric": metric, "notes": prep.notes + bound.notes, **settings_dict(search_, run_),
                        "carbon": {**carbon.to_dict(), "country": country}}
            try:
                rundir.create(saved, baseline)
                from autocompress.utils import atomic_write_text

                for name, text in (run_files or {}).items():
                    atomic_write_text(rundir.path / name, text)
            except OSError as e:
                raise UserError(f"cannot write the run directory {rundir.path}: {e.strerror or e}") from None
        if not (rundir.path / "layers.json").exists():
            rundir.write_layers(prep.table, prep.profile)
        tracker = None
        if mlflow:
            from autocompress.tracking import MlflowTracker

            tracker = MlflowTracker(mlflow, rundir.path, log)
            tracker.start(rundir.settings, rundir.baseline)
            tracker.sync(rundir.trials())  # a resume: what the last start did not log
        meter = SearchEnergyMeter(rundir.path, country).start() if measure_energy else None

        def on_record(record, records_):
            if meter is not None:
                meter.update()  # a killed search keeps what it had spent up to its last trial
            if tracker is not None:
                tracker.trial(record)
            if on_trial is not None:
                on_trial(record, records_)

        try:
            records = run_search(problem, search_, run_, rundir, on_trial=on_record, log=log)  # writes the tables
        except BaseException:
            if tracker is not None:
                tracker.finish(None, status="KILLED")  # resumable: a resume reopens the same parent run
            raise
        finally:
            if meter is not None:
                meter.stop()
        frame = trials_frame(records)
        pareto, hv = pareto_of(frame, objectives, reference_point(problem, rundir.baseline))
        result = SearchResult(rundir.path, frame, pareto, hv, rundir.baseline, records, prep, recovery, seed, metric)
        if report:
            try:
                result.report(grid_gco2_kwh=grid_gco2_kwh, pue=pue, country=country)
            except Exception as e:  # noqa: BLE001 - the search's results are on disk either way
                log(f"warning: the report could not be written ({type(e).__name__}: {e}); "
                    f"try: autocompress report {rundir.path}")
        if tracker is not None:
            uri = tracker.finish(result)
            if uri:
                log(f"MLflow: run {tracker.parent} at {tracker.uri}; model {uri}")
        if pareto.empty and raise_if_infeasible:
            raise NothingFeasible(f"no candidate met the constraints; every trial is recorded in "
                                  f"{rundir.path}/trials.csv (loosen a constraint or raise the trial budget)",
                                  result)
        return result


def compress(model: nn.Module, config: CompressionConfig | str | Path, *, data: DataBundle | None = None,
             input_shape=None, recovery: Recovery = Recovery(), seed: int = 0) -> nn.Module:
    """Apply a CompressionConfig (object or file) to ``model``; returns the compressed copy.

    ``data`` (a DataBundle) gives the input shape and the batches for recovery and activation
    calibration; without it, give ``input_shape`` (weight-only configs need no data)."""
    if not isinstance(config, CompressionConfig):
        config = CompressionConfig.load(config)
    shape = data.input_shape if data is not None else _parse_shape(input_shape)
    if shape is None:
        raise UserError("compress() needs data or input_shape to trace the model")
    table = trace(model, torch.zeros((1, *shape)))
    return apply(model, table, config, data=data, recovery=recovery, seed=seed)


def profile(model: str | nn.Module = "resnet18", target: str | Target = "tpu-v1", *,
            input_shape=None, num_classes: int | None = None, data: str | None = "digits",
            config: CompressionConfig | None = None, stem: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Per-layer MACs, parameters, latency and energy of ``model`` (uncompressed at the target's
    reference precision, or compressed by ``config``); returns (layers, totals)."""
    if not load_target(target).layerwise:
        raise UserError(f"profile costs layer by layer on an analytic profile; {target} times whole models. "
                        f"Build a profile for this machine with: autocompress calibrate --target {target} --out my.yaml")
    prep = prepare(model, None if input_shape else data, target, input_shape=input_shape,
                   num_classes=num_classes, stem=stem, baseline=None, log=lambda s: None)
    from autocompress.hardware import CostModel
    from autocompress.config import resolve

    cm = CostModel(prep.table, prep.profile)
    cfg = config or cm.reference()
    cost = cm.cost(cfg, detail=True)
    frame = cost.frame(prep.table.names)
    frame.insert(1, "kind", [layer.kind for layer in prep.table.layers])
    r = resolve(prep.table, cfg)
    totals = {"model": prep.model_desc, "target": prep.profile.name, "input_shape": list(prep.table.input_shape),
              "macs": int(r.macs.sum()), "params": prep.table.total_params if config is None else r.params,
              "latency_ms": cost.latency_s * 1e3,
              "energy_mj": cost.energy_j * 1e3, "origin": cost.origin,
              "precision": "reference ({}-bit weights, {}-bit activations)".format(
                  prep.profile.reference_precision.weights, prep.profile.reference_precision.activations)
              if config is None else "as configured",
              "assumed": dict(prep.profile.assumed)}  # figures an imported file did not give (scalesim:, zigzag:)
    return frame, totals


def export_onnx(model: nn.Module, path: str | Path, *, input_shape=None, data: DataBundle | None = None,
                int4: bool = True):
    """Write a compressed model (from :func:`compress` or ``SearchResult.apply``) as ONNX with
    QuantizeLinear / DequantizeLinear: integer weights per output channel (INT8, INT4 for <= 4
    bits at opset 21), per-tensor activation QDQ with the calibrated scales. Returns what was
    written (:class:`autocompress.onnx_export.OnnxExport`)."""
    from autocompress.onnx_export import export_onnx as _export

    shape = data.input_shape if data is not None else _parse_shape(input_shape)
    if shape is None:
        raise UserError("export_onnx() needs data or input_shape (e.g. 3x32x32)")
    return _export(model, torch.zeros((1, *shape)), path, int4=int4)


def check_calibration(target, samples: int) -> MeasuredTarget:
    """The measured target of a calibration, or a one-line error before anything is built."""
    measured = load_target(target)
    if not measured.measures_built_models:
        raise UserError(f"calibrate measures on this machine: --target cpu-local or cuda-local, not {target}")
    if samples < 4:
        raise UserError(f"--samples must be at least 4 (the fit has 5 free parameters; the samples, some "
                        f"of them again in float, and the uncompressed model give 7 points), not {samples}")
    return measured


def calibrate(model: str | nn.Module = "resnet18", target: str | MeasuredTarget = "cpu-local", *,
              out: str | Path | None = None, samples: int = 24, input_shape=None, data: str | None = None,
              num_classes: int | None = None, space=None, seed: int = 0, name: str | None = None,
              progress: Callable[[int, int], None] | None = None):
    """Measure ``samples`` compressed variants of ``model`` on a measured target and fit the
    analytic cost model's free parameters to them; returns the fitted HardwareProfile and the
    calibration record (and writes the profile YAML to ``out``). Weights do not matter for
    timing: without data the model keeps its initial weights and calibrates on random inputs."""
    from autocompress.hardware.calibrate import calibrate as _calibrate

    measured = check_calibration(target, samples)
    prep = prepare(model, data, measured, input_shape=input_shape, num_classes=num_classes, baseline=None,
                   log=lambda s: None)
    bound = prep.space(space)
    return _calibrate(prep.model, prep.table, measured, bound, samples=samples, data=prep.data, seed=seed,
                      out=out, name=name, model_desc=prep.model_desc, progress=progress)
