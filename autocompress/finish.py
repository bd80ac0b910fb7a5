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
from autocompress.compress import Recovery, apply
from autocompress.compress.recover import predict
from autocompress.config import CompressionConfig
from autocompress.evaluate import accuracy, paired_drop_se
from autocompress.search.rundir import RunDirectory
from autocompress.utils import atomic_write_json, atomic_write_text

__all__ = ["pick_record", "finish", "search_training_images", "cpu_model"]


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
    rd = RunDirectory(run_dir)
    if not (rd.path / "settings.json").is_file():
        raise UserError(f"{run_dir} is not a run directory (no settings.json)")
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


def finish(prepared, run_dir: str | Path, record: dict, recovery: Recovery, *, epochs: float = 1.0,
           steps: int | None = None, lr: float | None = None, seed: int = 0,
           progress: Callable[[int, int, float], None] | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``record``'s candidate (quantisation-aware, with distillation from the
    uncompressed model) for ``steps`` (default: ``epochs`` over the training split), then
    measure it on the validation split (paired against the uncompressed model, as in the search)
    and on the whole test split; write it all to ``run_dir/finished/trial<N>/``."""
    data = prepared.data
    if data is None:
        raise UserError("finetune needs the search's data")
    if steps is None:
        if epochs <= 0:
            raise UserError(f"--epochs must be above 0, not {epochs}")
        steps = max(1, round(epochs * len(data.train_y) / recovery.batch_size))
    if steps < 1:
        raise UserError(f"--steps must be at least 1, not {steps}")
    recovery = replace(recovery, finetune_steps=int(steps), lr=lr if lr is not None else recovery.lr)
    # a cache of teacher logits pays when many candidates share it; one long run sees each image
    # about once, where the live teacher costs one forward per image (and keeps random crops),
    # while the cache would cost two (image and flip) for every training image
    images = steps * recovery.batch_size
    recovery = replace(recovery, teacher_cache=images > 2 * len(data.train_y), teacher_pool=len(data.train_y))
    config = CompressionConfig.from_dict(record["config"])
    trial = int(record["trial"])
    out = Path(run_dir) / "finished" / f"trial{trial}"
    out.mkdir(parents=True, exist_ok=True)
    log(f"finishing trial {trial}: {steps} steps of batch {recovery.batch_size} "
        f"({steps * recovery.batch_size:,} training images) on {len(data.train_y):,} training images")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = apply(prepared.model, prepared.table, config, data=data, recovery=recovery, seed=seed,
                  progress=progress)
    train_s = time.perf_counter() - t0

    def figures(x, y, split):
        base = predict(prepared.model, x)
        logits = predict(model, x)
        a, b = accuracy(base, y), accuracy(logits, y)
        return {f"accuracy_{split}": b, f"baseline_accuracy_{split}": a, f"accuracy_drop_{split}": 100 * (a - b),
                f"accuracy_drop_se_{split}": paired_drop_se(base, logits, y), f"{split}_images": len(y)}

    result = {"trial": trial, "config": config.to_dict(), "recovery": asdict(recovery), "seed": seed,
              "training_images": steps * recovery.batch_size, "train_seconds": round(train_s, 1),
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
