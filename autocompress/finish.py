"""The finishing step: train a chosen candidate to its final accuracy and measure it on the test
split the search never saw. This is the model users take away.

    autocompress finetune RUN_DIR --pick best --epochs 1

writes ``RUN_DIR/finished/trial<N>/``: ``result.json`` (the figures below, each with what it rests
on), ``config.yaml``, ``model.pt`` (TorchScript) and ``model.onnx`` (QDQ ONNX, the integers the
PyTorch model simulates).
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from autocompress._errors import NothingFeasible, UserError
from autocompress.compress import Candidate, Recovery
from autocompress.compress.recover import predict
from autocompress.config import CompressionConfig
from autocompress.evaluate import accuracy, paired_drop_se
from autocompress.search.record import Trial
from autocompress.search.rundir import RunDirectory, best_of
from autocompress.utils import atomic_write_json, atomic_write_text

__all__ = ["pick_record", "finish", "race_entrants", "race_survivors", "projected_drop", "search_training_images",
           "cpu_model"]


def cpu_model() -> str:
    """The CPU's model name (timings are comparable only on the same one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_record(run_dir: str | Path, pick="best", max_acc_drop: float | None = None) -> Trial:
    """The record of trial ``pick`` (a number) or of the best Pareto candidate (highest energy
    reduction within ``max_acc_drop``, default: the search's own limit)."""
    rd = RunDirectory.existing(run_dir)
    records = rd.trials()
    if str(pick) == "best":
        import pandas as pd

        pareto = json.loads((rd.path / "pareto.json").read_text()) if (rd.path / "pareto.json").exists() else {}
        best = best_of(pd.DataFrame(pareto.get("candidates", []), columns=["trial", "accuracy_drop", "energy_reduction"]),
                       max_acc_drop)
        if best is None:
            raise NothingFeasible(f"no Pareto candidate in {run_dir} meets the limits")
        trial = int(best["trial"])
    else:
        try:
            trial = int(pick)
        except (TypeError, ValueError):
            raise UserError(f"--pick must be a trial number or 'best', not {pick!r}") from None
    record = next((r for r in records if int(r["trial"]) == int(trial) and r.get("config")), None)
    if record is None:
        raise UserError(f"{run_dir} has no trial {trial} with a config")
    return record


def search_training_images(records: list[dict], recovery: Recovery) -> int:
    """Images through forward + backward over a whole search (fine-tuned candidates)."""
    total = 0
    for r in map(Trial.of, records):
        if r.duplicate or r.failed:
            continue
        if "training_images" in r.metrics:
            total += r.training_images
        elif r.fine_tuned:  # a record written before the count was kept
            total += recovery.finetune_steps * recovery.batch_size
    return total


def race_entrants(records: list[dict], record: dict, max_acc_drop: float, *, entrants: int = 4,
                  slack: float = 1.0) -> list[dict]:
    """``record`` (the pick) and the candidates that could still beat it: fine-tuned in the
    search, a higher energy reduction, and a validation drop at most ``slack`` points beyond
    ``max_acc_drop`` (short fine-tuning leaves accuracy a long one wins back); the highest energy
    reductions first, ``entrants`` in all."""
    record = Trial.of(record)
    e0 = record.energy_reduction or 0.0
    out = [record]
    pool = [r for r in map(Trial.of, records)
            if r.comparable() and r.number != record.number and r.fine_tuned
            and r.energy_reduction > e0 and r.accuracy_drop <= max_acc_drop + slack]
    for r in sorted(pool, key=lambda r: -r.energy_reduction):
        if len(out) >= entrants:
            break
        out.append(r)
    return out


def race_survivors(scores: list[tuple[float, float]], max_acc_drop: float, keep: int) -> list[int]:
    """Of (energy reduction, accuracy drop) ``scores``, the indices of the ``keep`` that go on:
    those within ``max_acc_drop``, highest energy reduction first, then the others, smallest drop
    first (more training may still bring them within), ties to the higher energy reduction."""
    def rank(i):
        energy, drop = scores[i]
        if drop <= max_acc_drop:
            return (0, -energy, drop)
        return (1, drop, -energy)  # a tie in drop goes to the one that saves more

    order = sorted(range(len(scores)), key=rank)
    return order[:keep]


# a fine-tuned candidate's accuracy drop falls roughly as 1/sqrt(steps) towards a floor
RECOVERY_EXPONENT = 0.5


def projected_drop(points: list[tuple[float, float]], steps: float, exponent: float = RECOVERY_EXPONENT) -> float:
    """The accuracy drop of a candidate after ``steps`` steps of fine-tuning in all, extrapolated
    from its measured (steps, drop) ``points`` along drop(s) = floor + a * s**-exponent (least
    squares). With one point, or points that do not fall, the last measured drop: a projection
    never promises more than a measured fall supports."""
    pts = [(float(s), float(d)) for s, d in points if s and s > 0 and d is not None]
    if not pts:
        return math.inf
    last = pts[-1][1]
    if len({s for s, _ in pts}) < 2 or steps <= pts[-1][0]:
        return last
    x = [s ** -exponent for s, _ in pts]
    y = [d for _, d in pts]
    xm, ym = sum(x) / len(x), sum(y) / len(y)
    a = sum((xi - xm) * (yi - ym) for xi, yi in zip(x, y)) / sum((xi - xm) ** 2 for xi in x)
    if a <= 0:
        return last
    return min(last, ym - a * xm + a * steps ** -exponent)


def _search_point(record: dict, batch_size: int) -> list[tuple[float, float]]:
    """The (steps, drop) the search measured for ``record`` after its short fine-tuning."""
    record = Trial.of(record)
    if not record.fine_tuned or not record.training_images or record.accuracy_drop is None:
        return []
    return [(record.training_images / batch_size, record.accuracy_drop)]


class _Entrant:
    """One candidate of a race: its trial record, its model in training and its measured drops."""

    def __init__(self, record, candidate: Candidate, batch_size: int):
        self.record, self.candidate = record, candidate
        self.energy = record["metrics"]["energy_reduction"]
        self.points = _search_point(record, batch_size)
        self.drop = self.se = None

    def measure(self, base, x, y) -> None:
        logits = predict(self.candidate.finished(), x)
        self.drop = 100 * (accuracy(base, y) - accuracy(logits, y))
        self.se = paired_drop_se(base, logits, y)
        self.points.append((self.candidate.steps_done, self.drop))

    def projected(self, steps: float) -> float:
        return projected_drop(self.points, steps)


def _race(prepared, entrants: list[dict], recovery: Recovery, *, steps: int, max_acc_drop: float, eta: int,
          share: float, seed: int, log, progress) -> tuple[_Entrant, list[_Entrant], dict]:
    """Constraint-aware successive halving over fine-tuning steps: every entrant trains a first
    rung, the best 1/``eta`` go on with ``eta`` times the steps, and so on until one is left; it
    gets the rest of the ``steps``. "Best" is the highest energy reduction among those projected
    within ``max_acc_drop`` once they would have had the rest (:func:`projected_drop` from the
    search's measurement and the rungs', on the whole validation split, paired against the
    uncompressed model), then the smallest projected drop among the others. ``share`` of the
    steps go to the rungs."""
    data = prepared.data
    val_x, val_y = data.whole_val
    base = predict(prepared.model, val_x)
    n = len(entrants)
    rungs, left = 0, n
    while left > 1:
        rungs, left = rungs + 1, math.ceil(left / eta)
    first = max(1, int(share * steps / (rungs * n)))
    everyone = [_Entrant(r, Candidate(prepared.model, prepared.table, CompressionConfig.from_dict(r["config"]),
                                      data=data, recovery=recovery, seed=seed), recovery.batch_size)
                for r in entrants]
    alive = list(everyone)
    history = []
    finish_steps = (1 - share) * steps  # what the one left will train beyond its rungs
    for k in range(rungs):
        rung_steps = first * eta ** k
        for e in alive:
            e.candidate.train(rung_steps, teacher_cache=True)
            e.measure(base, val_x, val_y)
            proj = e.projected(e.candidate.steps_done + finish_steps)
            history.append({"rung": k, "trial": int(e.record["trial"]), "steps": e.candidate.steps_done,
                            "energy_reduction": e.energy, "accuracy_drop_val": e.drop, "accuracy_drop_se_val": e.se,
                            "projected_drop_val": proj})
            log(f"  race rung {k + 1}/{rungs}: trial {e.record['trial']} ({e.energy:.2f}x) after "
                f"{e.candidate.steps_done} steps: drop {e.drop:.2f} +/- {e.se:.2f} points on {len(val_y):,} "
                f"validation images (projected {proj:.2f} after {e.candidate.steps_done + finish_steps:.0f})")
        keep = race_survivors([(e.energy, e.projected(e.candidate.steps_done + finish_steps)) for e in alive],
                              max_acc_drop, max(1, math.ceil(len(alive) / eta)))
        alive = [alive[i] for i in keep]
        if progress:
            progress(k + 1, rungs, 0.0)
    return alive[0], everyone, {"entrants": [int(r["trial"]) for r in entrants], "eta": eta, "rungs": rungs,
                                "first_rung_steps": first, "history": history,
                                "training_images": sum(e.candidate.training_images for e in everyone),
                                "validation_images": len(val_y), "recovery_exponent": RECOVERY_EXPONENT}


def _fallback(winner: _Entrant, everyone: list[_Entrant], max_acc_drop: float) -> _Entrant | None:
    """The entrant measured within ``max_acc_drop`` that saves the most, where the winner was
    chosen on a projection alone (its measured drop is beyond the limit); else None."""
    if winner.drop is None or winner.drop <= max_acc_drop:
        return None
    safe = [e for e in everyone if e is not winner and e.drop is not None and e.drop <= max_acc_drop]
    return max(safe, key=lambda e: e.energy) if safe else None


def finish(prepared, run_dir: str | Path, record: dict, recovery: Recovery, *, epochs: float = 1.0,
           steps: int | None = None, lr: float | None = None, seed: int = 0, race: int = 1,
           max_acc_drop: float | None = None, race_share: float = 0.4, eta: int = 2,
           progress: Callable[[int, int, float], None] | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``record``'s candidate (quantisation-aware, with distillation from the
    uncompressed model) for ``steps`` (default: ``epochs`` over the training split), then
    measure it on the whole validation split (paired against the uncompressed model, as in the
    search) and on the whole test split; write it all to ``run_dir/finished/trial<N>/``.

    ``race`` > 1: ``record`` and up to ``race`` - 1 candidates of the run that could still beat
    it (:func:`race_entrants`) share the steps by successive halving (``race_share`` of them in
    the rungs, the rest to the one left); the figures are the winner's, with the race's. A winner
    whose measured drop is still beyond the limit (chosen on its projected drop) is measured again
    halfway through the rest and gives the second half to the best entrant measured within the
    limit if it is still off course."""
    data = prepared.data
    if data is None:
        raise UserError("finetune needs the search's data")
    if steps is None:
        if epochs <= 0:
            raise UserError(f"--epochs must be above 0, not {epochs}")
        steps = max(1, round(epochs * len(data.train_y) / recovery.batch_size))
    if steps < 1:
        raise UserError(f"--steps must be at least 1, not {steps}")
    if race < 1:
        raise UserError(f"--race must be at least 1 (no race), not {race}")
    recovery = replace(recovery, finetune_steps=int(steps), lr=lr if lr is not None else recovery.lr)
    entrants = [record]
    if race > 1:
        if max_acc_drop is None:
            max_acc_drop = _run_limit(run_dir)
        entrants = race_entrants(RunDirectory(run_dir).trials(), record, max_acc_drop, entrants=race)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    race_log = fallback = None
    if len(entrants) > 1:
        log(f"racing {len(entrants)} candidates (trials {', '.join(str(r['trial']) for r in entrants)}) "
            f"over {int(race_share * 100)}% of {steps} steps by successive halving")
        winner, everyone, race_log = _race(prepared, entrants, recovery, steps=steps, max_acc_drop=max_acc_drop,
                                           eta=eta, share=race_share, seed=seed, log=log, progress=None)
        record, candidate, race_images = winner.record, winner.candidate, race_log["training_images"]
        fallback = _fallback(winner, everyone, max_acc_drop)
    else:
        candidate = Candidate(prepared.model, prepared.table, CompressionConfig.from_dict(record["config"]), data=data,
                              recovery=recovery, seed=seed)
        race_images = 0
    rest = max(0, steps - race_images // recovery.batch_size)
    # a cache of teacher logits pays when many candidates share it; one long run sees each image
    # about once, where the live teacher costs one forward per image (and keeps random crops),
    # while the cache would cost two (image and flip) for every training image
    cache = rest * recovery.batch_size > 2 * len(data.train_y)
    # a winner chosen on a projection alone trains half the rest, then is measured again: if it is
    # still off course, the entrant measured within the limit trains the other half instead
    segments = [rest] if fallback is None else [rest // 2, rest - rest // 2]
    for i, seg in enumerate(segments):
        log(f"finishing trial {record['trial']}: {seg} steps of batch {recovery.batch_size} "
            f"({seg * recovery.batch_size:,} training images) on {len(data.train_y):,} training images")
        candidate.recovery = replace(candidate.recovery, teacher_pool=len(data.train_y))
        candidate.train(seg, teacher_cache=cache, progress=progress)
        if i + 1 < len(segments):
            val_x, val_y = data.whole_val
            winner.measure(predict(prepared.model, val_x), val_x, val_y)
            proj = winner.projected(winner.candidate.steps_done + segments[i + 1])
            switch = winner.drop > max_acc_drop and proj > max_acc_drop
            race_log["check"] = {"trial": int(winner.record["trial"]), "steps": winner.candidate.steps_done,
                                 "accuracy_drop_val": winner.drop, "accuracy_drop_se_val": winner.se,
                                 "projected_drop_val": proj, "switched_to": int(fallback.record["trial"]) if switch else None}
            log(f"  check: trial {winner.record['trial']} after {winner.candidate.steps_done} steps: drop "
                f"{winner.drop:.2f} +/- {winner.se:.2f} points (projected {proj:.2f})"
                + (f"; the rest goes to trial {fallback.record['trial']} (measured {fallback.drop:.2f})" if switch else ""))
            if switch:
                record, candidate = fallback.record, fallback.candidate
    config = CompressionConfig.from_dict(record["config"])
    trial = int(record["trial"])
    out = Path(run_dir) / "finished" / f"trial{trial}"
    out.mkdir(parents=True, exist_ok=True)
    model = candidate.finished(copy_=False)
    train_s = time.perf_counter() - t0
    training_images = race_images + rest * recovery.batch_size

    def figures(x, y, split):
        base = predict(prepared.model, x)
        logits = predict(model, x)
        a, b = accuracy(base, y), accuracy(logits, y)
        return {f"accuracy_{split}": b, f"baseline_accuracy_{split}": a, f"accuracy_drop_{split}": 100 * (a - b),
                f"accuracy_drop_se_{split}": paired_drop_se(base, logits, y), f"{split}_images": len(y)}

    result = {"trial": trial, "config": config.to_dict(), "recovery": asdict(recovery), "seed": seed,
              "training_images": training_images, "train_seconds": round(train_s, 1),
              "cpu": cpu_model(), "threads": torch.get_num_threads()}
    result.update(figures(*data.whole_val, "val"))
    if data.test_y is not None:
        result.update(figures(data.test_x, data.test_y, "test"))
    else:
        result["note"] = "no test split: the figures rest on the validation data the search decided on"
    m = record.get("metrics") or {}
    result.update({k: m.get(k) for k in ("energy_reduction", "energy_mj", "latency_ms", "size_bytes", "params",
                                         "macs", "cost_origin")})
    result["search_accuracy"] = m.get("accuracy")
    if race_log is not None:
        result["race"] = race_log
    result["eval_seconds"] = round(time.perf_counter() - t0 - train_s, 1)
    atomic_write_text(out / "config.yaml", config.to_yaml())
    from autocompress.export import save_model
    from autocompress.onnx_export import export_onnx

    example = torch.zeros((1, *prepared.table.input_shape))
    result["torchscript"] = save_model(model, example, out / "model.pt")
    try:
        result["onnx"] = export_onnx(model, example, out / "model.onnx").summary()
    except Exception as e:  # noqa: BLE001 - the TorchScript model and the figures are written either way
        result["onnx"] = f"not written ({type(e).__name__}: {e})"
    atomic_write_json(out / "result.json", result)
    result["path"] = str(out)
    return result


def _run_limit(run_dir) -> float:
    settings = json.loads((Path(run_dir) / "settings.json").read_text())
    limit = ((settings.get("search") or {}).get("constraints") or {}).get("max_acc_drop")
    if limit is None:
        raise UserError("a race needs an accuracy limit: pass --max-acc-drop (the search had none)")
    return float(limit)
