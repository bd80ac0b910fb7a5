"""The run directory: everything a search produces, written so that a kill loses nothing.

settings.json   the resolved settings (what was searched, how it was run)
baseline.json   the uncompressed model's metrics and the reference point
trials.jsonl    one finished trial per line, appended and fsynced as each one ends
trials.csv      the same as a table, rewritten atomically
pareto.csv/json the Pareto set of feasible trials and its hypervolume, after every trial
layers.json     the LayerTable and the hardware profile: the report costs any trial per layer
                from them, without the model (which a user's nn.Module run could not rebuild)
search_energy.json  the search's own energy (autocompress.search_energy)
report.html, *.png  the report (autocompress.report)
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pandas as pd

from autocompress.search.pareto import hypervolume, pareto_mask, to_minimisation
from autocompress.utils import atomic_write_json, atomic_write_text

METRIC_COLUMNS = ["accuracy", "accuracy_drop", "size_bytes", "params", "macs", "latency_ms",
                  "energy_mj", "energy_reduction", "sqnr_db", "quant_error", "weight_sqnr_min_db",
                  "weight_bits_max", "accuracy_screen", "fidelity", "cost_origin"]


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def lock(self):
        """Hold the run directory for one search: an OS-level lock on ``.lock``, so a second
        search on it stops at once with the holder's PID. The OS drops the lock when its process
        dies, so a killed search leaves nothing stale to clean up."""
        import fcntl

        from autocompress._errors import UserError

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / ".lock", "a+")
        except OSError as e:
            raise UserError(f"cannot write the run directory {self.path}: {e.strerror or e}") from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise UserError(f"{self.path} is in use by another search (PID {holder}); wait for it to "
                                f"end or choose another --out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield self
        finally:
            handle.close()  # closing releases the lock

    def set_aside_torn_line(self) -> str | None:
        """A kill during a write can leave a partial last line in trials.jsonl; the next append
        would merge into it. Move it to trials.jsonl.torn (kept, not lost) and say so; its trial
        is not recorded, so it runs again."""
        path = self.path / "trials.jsonl"
        if not path.exists():
            return None
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None
        cut = data.rfind(b"\n") + 1
        with open(self.path / "trials.jsonl.torn", "ab") as f:
            f.write(data[cut:] + b"\n")
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        return (f"set aside a partial last line of {path.name} (a kill during a write) in "
                f"{path.name}.torn; that trial runs again")

    def create(self, settings: dict, baseline: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / "settings.json", settings)
        atomic_write_json(self.path / "baseline.json", baseline)

    def write_layers(self, table, profile) -> None:
        """The LayerTable and the profile, so a report needs no model; a measured target is kept
        by its spec (it has no per-layer model)."""
        saved = profile.model_dump(mode="json") if hasattr(profile, "model_dump") else {"measured": profile.spec}
        atomic_write_json(self.path / "layers.json", {"table": table.to_dict(), "profile": saved})

    def layers(self):
        """(LayerTable, HardwareProfile) as the search saw them, or None for an older run."""
        path = self.path / "layers.json"
        if not path.exists():
            return None
        from autocompress.graph import LayerTable
        from autocompress.hardware import HardwareProfile

        data = json.loads(path.read_text())
        if "measured" in data["profile"]:
            from autocompress.hardware import load_target
            return LayerTable.from_dict(data["table"]), load_target(data["profile"]["measured"])
        return LayerTable.from_dict(data["table"]), HardwareProfile.model_validate(data["profile"])

    @property
    def settings(self) -> dict:
        return json.loads((self.path / "settings.json").read_text())

    @property
    def baseline(self) -> dict:
        return json.loads((self.path / "baseline.json").read_text())

    def trials(self) -> list[dict]:
        """Every trial recorded; a half-written last line (a kill mid-write) is skipped."""
        path = self.path / "trials.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def append(self, record: dict) -> None:
        with open(self.path / "trials.jsonl", "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_tables(self, records: list[dict], objectives: dict[str, str], reference_point: dict[str, float]):
        frame = trials_frame(records)
        atomic_write_text(self.path / "trials.csv", frame.to_csv(index=False))
        pareto, hv = pareto_of(frame, objectives, reference_point)
        atomic_write_text(self.path / "pareto.csv", pareto.to_csv(index=False))
        atomic_write_json(self.path / "pareto.json", {
            "objectives": objectives, "reference_point": reference_point, "hypervolume": hv,
            "candidates": json.loads(pareto.to_json(orient="records")),
            "configs": {int(r["trial"]): r["config"] for r in records
                        if r.get("config") and int(r["trial"]) in set(pareto["trial"])},
        })
        return frame, pareto, hv


def trials_frame(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {"trial": r["trial"], "status": r["status"], "seconds": r.get("seconds"),
               "duplicate_of": r.get("duplicate_of")}
        row.update({k: (r.get("metrics") or {}).get(k) for k in METRIC_COLUMNS})
        row["error"] = r.get("error")
        rows.append(row)
    cols = ["trial", "status", *METRIC_COLUMNS, "seconds", "duplicate_of", "error"]
    return pd.DataFrame(rows, columns=cols).sort_values("trial", kind="stable").reset_index(drop=True)


def pareto_of(frame: pd.DataFrame, objectives: dict[str, str], reference_point: dict[str, float]):
    # a config proposed again counts once (its first trial)
    feasible = frame[(frame["status"] == "ok") & frame["duplicate_of"].isna()].reset_index(drop=True)
    if feasible.empty:
        return feasible, 0.0
    F = to_minimisation(feasible, objectives)
    mask = pareto_mask(F)
    ref = to_minimisation(pd.DataFrame([reference_point]), objectives)[0]
    pareto = feasible[mask].sort_values(list(objectives)[0], ascending=False, kind="stable")
    return pareto.reset_index(drop=True), hypervolume(F[mask], ref)
