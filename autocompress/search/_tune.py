"""Runs trials under Ray Tune: a local Ray by default, a cluster with ``ray_address``.

Our Sampler proposes through a Ray Tune ``Searcher``; each trial evaluates one candidate in a
Ray worker and returns its record; the driver records it (fsynced) the moment it ends.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Callable

from autocompress.search._sampler import Sampler
from autocompress.search.record import Trial
from autocompress.search.problem import Problem

# Ray Tune's own trial tables and banners: the CLI shows its own progress instead
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")
# Ctrl-C must reach us (KeyboardInterrupt): every finished trial is on disk already, and the CLI
# then prints the command that resumes; Tune's own handler would end the run as if complete
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


def _trial(tune_config: dict, problem: Problem | None = None) -> dict:
    import torch

    if tune_config.get("duplicate_of") is not None:  # nothing to evaluate: the driver has the result
        return {"payload": "", "trial": tune_config["index"], "duplicate_of": tune_config["duplicate_of"]}
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    record = problem.evaluate(tune_config["index"], tune_config["values"], tune_config.get("front"),
                              tune_config.get("pairs"))
    # the record for our driver, and its scalars flat for Tune's own result files (ResultGrid)
    flat = {k: v for k, v in (record.get("metrics") or {}).items() if isinstance(v, (int, float, str, bool))}
    return {"payload": json.dumps(record, default=str), "trial": record["trial"], "status": record["status"],
            **flat}


try:
    from ray.tune.search import Searcher as _RaySearcher
except ImportError:  # pragma: no cover - ray is a dependency
    _RaySearcher = object


def _key(values: dict) -> str:
    return json.dumps(values, sort_keys=True)


class SamplerSearcher(_RaySearcher):
    """A Ray Tune Searcher that asks our Sampler and tells it each result."""

    def __init__(self, sampler: Sampler, problem: Problem, first_index: int, on_record: Callable[[dict], None],
                 seen: dict[str, dict] | None = None, stop: threading.Event | None = None):
        super().__init__()
        self.sampler, self.problem, self.on_record = sampler, problem, on_record
        self.stop = stop or threading.Event()
        self.pending: dict[str, tuple] = {}
        self.next_index = first_index
        self.seen = seen if seen is not None else {}  # params -> the first record that had them
        self.failure: OSError | None = None  # the run directory could not be written
        # what each trial is sent, kept up to date as trials end so that proposing one costs the
        # same at trial 1,000 as at trial 10: the non-dominated points of the feasible trials over
        # the search's objectives (Problem.maximised; all a trial's "could it still enter the
        # front" test needs), and the (screened, fine-tuned) accuracy of every fine-tuned one
        self.front: list[tuple[float, ...]] = []
        self.pairs: list[tuple[float, float]] = []
        for r in self.seen.values():
            self._learn(r)

    def _learn(self, r: dict) -> None:
        m = r.get("metrics") or {}
        if r["status"] == "ok":
            p = self.problem.maximised(m)
            if not any(all(q >= x for q, x in zip(member, p)) for member in self.front):
                self.front = [q for q in self.front if not all(x >= y for x, y in zip(p, q))] + [p]
        if not Trial.of(r).failed and Trial.of(r).fine_tuned and m.get("accuracy_screen") is not None:
            self.pairs.append((m["accuracy_screen"], m["accuracy"]))

    def suggest(self, trial_id):
        if self.stop.is_set():  # interrupted: no new trials
            return _RaySearcher.FINISHED
        asked = self.sampler.ask()
        if asked is None:  # the sampler waits for a generation's results; Tune asks again
            return None
        handle, values = asked
        index = self.next_index
        self.next_index += 1
        self.pending[trial_id] = (handle, index, values)
        first = self.seen.get(_key(values))
        # the Pareto front so far: the trial decides whether its candidate deserves fine-tuning;
        # what fine-tuning won back so far: the trial's screening rule learns from it
        return {"index": index, "values": values, "duplicate_of": first["trial"] if first else None,
                "front": list(self.front), "pairs": list(self.pairs)}

    def on_trial_complete(self, trial_id, result=None, error=False):
        handle, index, values = self.pending.pop(trial_id)
        first = self.seen.get(_key(values))
        if first is not None:  # a repeated proposal: the same result, recorded as a duplicate
            record = {k: v for k, v in first.items() if k not in ("trial", "seconds", "duplicate_of")}
            record.update(trial=index, duplicate_of=first["trial"], seconds=0.0)
        elif result and result.get("payload"):
            record = json.loads(result["payload"])
        else:  # the worker itself died (out of memory, a lost node)
            record = {"trial": index, "params": values, "status": "failed",
                      "error": "the Ray worker running this trial died"}
        self.sampler.tell(handle, self.problem.objective_values(record), self.problem.constraint_values(record))
        if first is None and record["status"] != "failed":
            self.seen[_key(values)] = record
            self._learn(record)
        if self.failure is not None:
            return  # the run directory stopped taking records: the trial runs again on resume
        try:
            self.on_record(record)
        except OSError as e:  # read-only, full or gone mid-run: stop, keeping what is recorded
            self.failure = e
            self.stop.set()

    # Ray pickles the searcher into its own experiment state; our resume reads trials.jsonl
    # instead, so the live sampler (which holds locks) stays out of that copy.
    def __getstate__(self):  # noqa: D105
        return {"pending": {}, "next_index": self.next_index}

    def save(self, checkpoint_path):
        pass

    def restore(self, checkpoint_path):
        pass


def _ship_user_code(model) -> None:
    """Ray workers may not be able to import a user's model module (a script, a test file):
    send the classes of such modules by value instead of by reference."""
    import sys

    from ray import cloudpickle

    for mod in model.modules():
        name = type(mod).__module__
        module = sys.modules.get(name)
        path = getattr(module, "__file__", "") or ""
        if module is None or name.startswith(("torch", "autocompress")) or "site-packages" in path:
            continue
        try:
            cloudpickle.register_pickle_by_value(module)
        except (ValueError, TypeError):
            pass


# Ray's own fate sharing ends its raylet and workers when the driver dies, but not every process
# the raylet started: after a SIGKILL of the driver its dashboard and runtime-env agents live on
# (renamed "ray::DashboardAgent" etc., reparented to init). This watcher, a tiny process of its
# own session (so a Ctrl-C or a kill of the driver's process group does not reach it), waits for
# the driver to go away and then ends every process that still has the Ray session open: its
# folder in the command line or among its open files. A normal end stops it first.
_REAPER = r"""
import os, signal, sys, time
import psutil
driver, session = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while os.getppid() == driver:
    time.sleep(0.5)
time.sleep(1.0)  # Ray's own fate sharing first
def holds(p):
    try:
        if any(session in a for a in p.cmdline()):
            return True
        return any(f.path.startswith(session) for f in p.open_files())
    except (psutil.Error, OSError):
        return False
left = [p for p in psutil.process_iter() if p.pid != os.getpid() and holds(p)]
for p in left:
    try:
        p.terminate()
    except psutil.Error:
        pass
gone, alive = psutil.wait_procs(left, timeout=3)
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
"""


def _start_reaper():
    """Start the watcher (above) for the local Ray this process has just started, and note the
    session (:func:`clean_stale_sessions`); None where that cannot be done (no psutil, no
    session folder): the search runs without it."""
    import subprocess
    import sys

    try:
        import psutil
        from ray._private.worker import _global_node

        session = _global_node.get_session_dir_path()
        if not session:
            return None
        me = psutil.Process()
        _session_note(os.getpid()).write_text(json.dumps({"pid": me.pid, "created": me.create_time(),
                                                          "session": session}))
        return subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), session],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    except Exception:  # noqa: BLE001 - a convenience: never a reason to fail a search
        return None


def _session_note(pid: int) -> Path:
    from autocompress.utils import cache_dir

    return cache_dir("ray-sessions") / f"{pid}.json"


def clean_stale_sessions(timeout: float = 15.0) -> list[str]:
    """End what is left of local Ray sessions whose search died with its watcher too (a kill of
    everything at once): every session noted by :func:`_start_reaper` whose driver is gone is
    handed to the watcher's code, which ends the processes that still hold it. Returns the
    sessions cleaned. Run before a search starts its own Ray."""
    import subprocess
    import sys

    try:
        import psutil
        from autocompress.utils import cache_dir

        notes = sorted(cache_dir("ray-sessions").glob("*.json"))
    except Exception:  # noqa: BLE001 - a convenience: never a reason to fail a search
        return []
    cleaned = []
    for note in notes:
        info: dict = {}
        try:
            info = json.loads(note.read_text())
            if abs(psutil.Process(info["pid"]).create_time() - info["created"]) < 1.0:
                continue  # its search is still running
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            pass  # a dead driver (or a note it could not finish writing)
        session = info.get("session") if isinstance(info, dict) else None
        if session:  # the watcher's code, told of a driver that is already gone
            try:
                subprocess.run([sys.executable, "-c", _REAPER, str(info.get("pid", 0)), session], timeout=timeout,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cleaned.append(session)
            except (OSError, subprocess.SubprocessError):
                continue
        note.unlink(missing_ok=True)
    return cleaned


def _trial_name(trial) -> str:
    return f"trial_{trial.config['index']}"  # our index, not the whole config (Tune's default)


def run_trials(problem: Problem, sampler: Sampler, *, budget: int, first_index: int, workers: int,
               cpus_per_trial: float, gpus_per_trial: float = 0, ray_address: str | None = None,
               on_record: Callable[[dict], None], done: list[dict] | None = None,
               tune_dir: Path) -> None:
    """Run ``budget`` more trials; ``on_record`` is called in this process as each one ends.
    Tune's own results go to ``tune_dir`` (the run directory's ``tune/``): one experiment per
    start of the search (``trials``, then ``trials-from-N`` for a resume from trial N), each
    readable with ``tune.ExperimentAnalysis`` or ``tune.Tuner.restore(...).get_results()``."""
    import ray
    from ray import tune

    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = dict(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        if ray_address:
            try:
                ray.init(address=ray_address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                from autocompress._errors import UserError
                raise UserError(f"cannot connect to the Ray cluster at {ray_address}: {' '.join(str(e).split())[:200]}") from None
        else:
            clean_stale_sessions()
            ray.init(num_cpus=max(1, int(round(workers * cpus_per_trial))), include_dashboard=False, **kwargs)
    reaper = _start_reaper() if started_here and not ray_address else None
    try:
        _ship_user_code(problem.evaluator.model)
        trainable = tune.with_resources(tune.with_parameters(_trial, problem=problem),
                                        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        seen = {_key(r["params"]): r for r in (done or []) if r["status"] != "failed" and not r.get("duplicate_of")}
        stop = threading.Event()
        searcher = SamplerSearcher(sampler, problem, first_index, on_record, seen, stop)
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        storage = str(Path(tune_dir).resolve())
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=budget,
                                        max_concurrent_trials=workers, reuse_actors=True,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name="trials" if first_index == 0 else f"trials-from-{first_index}",
                                      storage_path=storage, verbose=0, log_to_file=True,
                                      callbacks=[JsonLoggerCallback(), CSVLoggerCallback()]),
        )
        # Ctrl-C: raise KeyboardInterrupt as usual, and also stop proposing trials, so that the
        # run ends even where Ray's event loop swallows the exception
        def on_sigint(signum, frame):
            stop.set()
            raise KeyboardInterrupt

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            tuner.fit()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if searcher.failure is not None:
            e = searcher.failure
            where = os.path.dirname(e.filename) if e.filename else "the run directory"
            from autocompress._errors import UserError
            raise UserError(f"cannot write {e.filename or where}: {e.strerror or e}; the search stopped and "
                            f"keeps every trial recorded before it. Fix the folder, then resume with: "
                            f"autocompress search --resume {where}") from None
        if stop.is_set():
            raise KeyboardInterrupt
    finally:
        if started_here:
            ray.shutdown()
            if reaper is not None:
                reaper.terminate()
                try:
                    reaper.wait(timeout=5)
                except Exception:  # noqa: BLE001
                    pass
                _session_note(os.getpid()).unlink(missing_ok=True)
