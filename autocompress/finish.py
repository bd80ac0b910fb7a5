"""The finishing step: train a chosen candidate to its final accuracy and measure it on the test
split the search never saw. This is the model users take away.

    autocompress finetune RUN_DIR --pick best --epochs 1

writes ``RUN_DIR/finished/trial<N>/``: ``result.json`` (the figures below, each with what it rests
on), ``config.yaml``, ``model.pt`` (TorchScript) and ``model.onnx`` (QDQ ONNX, the integers the
PyTorch model simulates).
"""
from __future__ import annotations

import json
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
from autocompress.search.rundir import RunDirectory
from autocompress.utils import atomic_write_json, atomic_write_text

__all__ = ["pick_record", "finish", "race_entrants", "race_survivors", "search_training_images", "cpu_model"]


def cpu_model() -> str:
    """The CPU's model name (timings are comparable only on the same one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_record(run_dir: str | Path, pick="best", max_acc_drop: float | None = None) -> dict:
    """The record of trial ``pick`` (a number) or of the best Pareto candidate (highest energy
    reduction within ``max_acc_drop``, default: the search's own limit)."""
    rd = RunDirectory.existing(run_dir)
    records = rd.trials()
    if str(pick) == "best":
        pareto = json.loads((rd.path / "pareto.json").read_text()) if (rd.path / "pareto.json").exists() else {}
        rows = [c for c in pareto.get("candidates", []) if max_acc_drop is None or c["accuracy_drop"] <= max_acc_drop]
        if not rows:
            raise NothingFeasible(f"no Pareto candidate in {run_dir} meets the limits")
        trial = max(rows, key=lambda c: c["energy_reduction"])["trial"]
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
    for r in records:
        m = r.get("metrics") or {}
        if r.get("duplicate_of") is not None or r["status"] == "failed":
            continue
        if "training_images" in m:
            total += int(m["training_images"] or 0)
        elif m.get("fidelity") == "full":  # a record written before the count was kept
            total += recovery.finetune_steps * recovery.batch_size
    return total


def race_entrants(records: list[dict], record: dict, max_acc_drop: float, *, entrants: int = 4,
                  slack: float = 1.0) -> list[dict]:
    """``record`` (the pick) and the candidates that could still beat it: fine-tuned in the
    search, a higher energy reduction, and a validation drop at most ``slack`` points beyond
    ``max_acc_drop`` (short fine-tuning leaves accuracy a long one wins back); the highest energy
    reductions first, ``entrants`` in all."""
    e0 = (record.get("metrics") or {}).get("energy_reduction") or 0.0
    seen = {int(record["trial"])}
    out = [record]
    pool = []
    for r in records:
        m = r.get("metrics") or {}
        if (r.get("config") is None or r.get("duplicate_of") is not None or r.get("status") == "failed"
                or m.get("accuracy_drop") is None or m.get("energy_reduction") is None or int(r["trial"]) in seen):
            continue
        if m.get("fidelity") == "full" and m["energy_reduction"] > e0 and m["accuracy_drop"] <= max_acc_drop + slack:
            pool.append(r)
    for r in sorted(pool, key=lambda r: -r["metrics"]["energy_reduction"]):
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


def _race(prepared, entrants: list[dict], recovery: Recovery, *, steps: int, max_acc_drop: float, eta: int,
          share: float, seed: int, log, progress) -> tuple[dict, Candidate, dict]:
    """Constraint-aware successive halving over fine-tuning steps: every entrant trains a first
    rung, the best 1/``eta`` go on with ``eta`` times the steps, and so on until one is left; it
    gets the rest of the ``steps``. "Best" is the highest energy reduction among those within
    ``max_acc_drop`` on the validation split (paired against the uncompressed model), then the
    smallest drop among the others. ``share`` of the steps go to the rungs."""
    import math

    data = prepared.data
    base = predict(prepared.model, data.val_x)
    n = len(entrants)
    rungs, left = 0, n
    while left > 1:
        rungs, left = rungs + 1, math.ceil(left / eta)
    first = max(1, int(share * steps / (rungs * n)))
    alive = [(r, Candidate(prepared.model, prepared.table, CompressionConfig.from_dict(r["config"]), data=data,
                           recovery=recovery, seed=seed)) for r in entrants]
    everyone = [cand for _, cand in alive]
    history = []
    for k in range(rungs):
        rung_steps = first * eta ** k
        scored = []
        for r, cand in alive:
            cand.train(rung_steps, teacher_cache=True)
            logits = predict(cand.finished(), data.val_x)
            drop = 100 * (accuracy(base, data.val_y) - accuracy(logits, data.val_y))
            se = paired_drop_se(base, logits, data.val_y)
            e = r["metrics"]["energy_reduction"]
            scored.append((e, drop, r, cand))
            history.append({"rung": k, "trial": int(r["trial"]), "steps": cand.steps_done, "energy_reduction": e,
                            "accuracy_drop_val": drop, "accuracy_drop_se_val": se})
            log(f"  race rung {k + 1}/{rungs}: trial {r['trial']} ({e:.2f}x) after {cand.steps_done} steps: "
                f"drop {drop:.2f} +/- {se:.2f} points on {len(data.val_y):,} validation images")
        keep = race_survivors([(e, d) for e, d, _, _ in scored], max_acc_drop, max(1, math.ceil(len(alive) / eta)))
        alive = [scored[i][2:] for i in keep]
        if progress:
            progress(k + 1, rungs, 0.0)
    winner, cand = alive[0]
    return winner, cand, {"entrants": [int(r["trial"]) for r in entrants], "eta": eta, "rungs": rungs,
                          "first_rung_steps": first, "history": history,
                          "training_images": sum(c.training_images for c in everyone)}


def finish(prepared, run_dir: str | Path, record: dict, recovery: Recovery, *, epochs: float = 1.0,
           steps: int | None = None, lr: float | None = None, seed: int = 0, race: int = 1,
           max_acc_drop: float | None = None, race_share: float = 0.4, eta: int = 2,
           progress: Callable[[int, int, float], None] | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``record``'s candidate (quantisation-aware, with distillation from the
    uncompressed model) for ``steps`` (default: ``epochs`` over the training split), then
    measure it on the validation split (paired against the uncompressed model, as in the search)
    and on the whole test split; write it all to ``run_dir/finished/trial<N>/``.

    ``race`` > 1: ``record`` and up to ``race`` - 1 candidates of the run that could still beat
    it (:func:`race_entrants`) share the steps by successive halving (``race_share`` of them in
    the rungs, the rest to the one left); the figures are the winner's, with the race's."""
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
    race_log = None
    if len(entrants) > 1:
        log(f"racing {len(entrants)} candidates (trials {', '.join(str(r['trial']) for r in entrants)}) "
            f"over {int(race_share * 100)}% of {steps} steps by successive halving")
        record, candidate, race_log = _race(prepared, entrants, recovery, steps=steps, max_acc_drop=max_acc_drop,
                                            eta=eta, share=race_share, seed=seed, log=log, progress=None)
    config = CompressionConfig.from_dict(record["config"])
    trial = int(record["trial"])
    out = Path(run_dir) / "finished" / f"trial{trial}"
    out.mkdir(parents=True, exist_ok=True)
    if race_log is None:
        candidate = Candidate(prepared.model, prepared.table, config, data=data, recovery=recovery, seed=seed)
        race_images = 0
    else:
        race_images = race_log["training_images"]
    rest = max(0, steps - race_images // recovery.batch_size)
    # a cache of teacher logits pays when many candidates share it; one long run sees each image
    # about once, where the live teacher costs one forward per image (and keeps random crops),
    # while the cache would cost two (image and flip) for every training image
    cache = rest * recovery.batch_size > 2 * len(data.train_y)
    log(f"finishing trial {trial}: {rest} steps of batch {recovery.batch_size} "
        f"({rest * recovery.batch_size:,} training images) on {len(data.train_y):,} training images")
    candidate.recovery = replace(candidate.recovery, teacher_pool=len(data.train_y))
    candidate.train(rest, teacher_cache=cache, progress=progress)
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
    result.update(figures(data.val_x, data.val_y, "val"))
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
