"""The run directory: everything a search produces, written so that a kill loses nothing.

settings.json   the resolved settings (what was searched, how it was run)
baseline.json   the uncompressed model's metrics and the reference point
trials.jsonl    one finished trial per line, appended and fsynced as each one ends
trials.csv      the same as a table: rebuilt from trials.jsonl when a search starts and ends,
                a row appended as each trial ends (so the cost per trial stays flat)
pareto.csv/json the Pareto set of feasible trials and its hypervolume: rebuilt from trials.jsonl
                at the start and end, and between them from the set so far and the new trial,
                rewritten only when the trial enters it
layers.json     the LayerTable and the hardware profile: the report costs any trial per layer
                from them, without the model (which a user's nn.Module run could not rebuild)
search_energy.json  the search's own energy (autocompress.search_energy)
report.html, *.png  the report (autocompress.report)
"""
from __future__ import annotations

import contextlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from autocompress.search.pareto import hypervolume, pareto_mask, to_minimisation
from autocompress.search.record import Trial
from autocompress.utils import _atomic, atomic_write_json, atomic_write_text


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


METRIC_COLUMNS = ["accuracy", "accuracy_drop", "size_bytes", "params", "macs", "latency_ms",
                  "energy_mj", "energy_reduction", "sqnr_db", "quant_error", "weight_sqnr_min_db",
                  "weight_bits_max", "accuracy_screen", "fidelity", "cost_origin"]


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._tables: dict | None = None  # what add_to_tables needs, set by write_tables

    @classmethod
    def existing(cls, path: str | Path) -> "RunDirectory":
        """The run directory at ``path``, or one line saying it is not one (no settings.json or
        baseline.json: :meth:`create` writes both before any trial). Every reader asks here."""
        rd = cls(path)
        for name in ("settings.json", "baseline.json"):
            if not (rd.path / name).is_file():
                from autocompress._errors import UserError

                raise UserError(f"{path} is not a run directory (no {name})")
        return rd

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
        """Put trials.jsonl right before a search appends to it again, keeping whatever is moved
        in trials.jsonl.torn (nothing is deleted) and saying so in one line, or None when there
        is nothing to do. A kill during a write can leave a partial last line, which the next
        append would merge into: it is set aside and its trial runs again. A line that does not
        read back as a trial (a damaged byte: its checksum no longer matches) or repeats a
        trial's index is set aside too; the lines kept are untouched."""
        path = self.path / "trials.jsonl"
        if not path.exists():
            return None
        data = path.read_bytes()
        if not data:
            return None
        cut = data.rfind(b"\n") + 1
        torn = data[cut:]
        lines = data[:cut].split(b"\n")[:-1]
        keep, bad, seen = [], [], set()
        for line in lines:
            record = _parse(line)
            if record is None or record["trial"] in seen:
                bad.append(line)
            else:
                seen.add(record["trial"])
                keep.append(line)
        if not torn and not bad:
            return None
        with open(self.path / "trials.jsonl.torn", "ab") as f:
            for line in bad + ([torn] if torn else []):
                f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if bad:
            atomic_write_bytes(path, b"".join(line + b"\n" for line in keep))
        else:
            with open(path, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        what = []
        if torn:
            what.append("a partial last line (a kill during a write)")
        if bad:
            what.append(f"{len(bad)} damaged or repeated line(s)")
        return (f"set aside {' and '.join(what)} of {path.name} in {path.name}.torn; "
                f"{'that trial runs' if len(bad) + bool(torn) == 1 else 'those trials run'} again")

    def create(self, settings: dict, baseline: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / "settings.json", settings)
        atomic_write_json(self.path / "baseline.json", baseline)

    def write_layers(self, table, profile) -> None:
        """The LayerTable and the profile, so a report needs no model; a measured target is kept
        by its spec (it has no per-layer model)."""
        atomic_write_json(self.path / "layers.json", {"table": table.to_dict(), "profile": profile.record()})

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

    def trials(self) -> list[Trial]:
        """Every trial recorded (typed: :class:`~autocompress.search.record.Trial`), in the order they ended. A line that does not read back as a
        trial (half-written by a kill, or damaged: its checksum does not match) or repeats a
        trial's index is skipped; :meth:`set_aside_torn_line` moves such lines aside."""
        path = self.path / "trials.jsonl"
        if not path.exists():
            return []
        out, seen = [], set()
        for line in path.read_bytes().split(b"\n"):
            record = _parse(line)
            if record is not None and record["trial"] not in seen:
                seen.add(record["trial"])
                out.append(record)
        return out

    def front(self) -> "Front":
        """The trials and their Pareto set and hypervolume, recomputed from trials.jsonl (the
        record of truth, so a run killed between two writes agrees with itself), against the
        reference point the search used (pareto.json's; for a run without one, the point its
        objectives and accuracy limit give). What :func:`autocompress.load` and the report show."""
        settings, baseline, records = self.settings, self.baseline, self.trials()
        search = settings.get("search") or {}
        objectives = search.get("objectives") or {"energy_reduction": "max", "accuracy": "max"}
        saved = self.path / "pareto.json"
        ref = json.loads(saved.read_text()).get("reference_point") if saved.is_file() else None
        ref = ref or hypervolume_reference(objectives, (search.get("constraints") or {}).get("max_acc_drop"), baseline)
        frame = trials_frame(records)
        pareto, hv = pareto_of(frame, objectives, ref)
        return Front(records, frame, pareto, hv, objectives, ref)

    def append(self, record: dict) -> None:
        """One finished trial, fsynced: a JSON line ending with a CRC-32 of the rest of it, so
        that a damaged line is told from a good one when the run is read back."""
        with open(self.path / "trials.jsonl", "ab") as f:
            f.write(_line(record))
            f.flush()
            os.fsync(f.fileno())

    def write_tables(self, records: list[dict], objectives: dict[str, str], reference_point: dict[str, float]):
        """Rebuild trials.csv and pareto.* from ``records`` (what trials.jsonl holds)."""
        frame = trials_frame(records)
        atomic_write_text(self.path / "trials.csv", frame.to_csv(index=False))
        pareto, hv = pareto_of(frame, objectives, reference_point)
        front = {int(t) for t in pareto["trial"]}
        self._write_pareto(pareto, hv, objectives, reference_point,
                           {int(r["trial"]): r for r in records if int(r["trial"]) in front})
        self._tables = {"objectives": objectives, "reference_point": reference_point,
                        "front": {int(r["trial"]): r for r in records if int(r["trial"]) in front}}
        return frame, pareto, hv

    def add_to_tables(self, record: dict) -> None:
        """One more trial in the tables, at a cost that does not grow with the trials before it:
        its row is appended to trials.csv, and the Pareto set is recomputed from the set so far
        plus this trial (the Pareto set of A + x is that of pareto(A) + x), rewritten only when
        the trial enters it. Call :meth:`write_tables` first (it sets up the set so far)."""
        if self._tables is None:
            raise RuntimeError("write_tables must run before add_to_tables")
        with open(self.path / "trials.csv", "a") as f:
            f.write(trials_frame([record]).to_csv(index=False, header=False))
        if record["status"] != "ok" or record.get("duplicate_of") is not None:
            return  # never on the Pareto set
        t = self._tables
        candidates = {**t["front"], int(record["trial"]): record}
        pareto, hv = pareto_of(trials_frame(list(candidates.values())), t["objectives"], t["reference_point"])
        front = {int(x) for x in pareto["trial"]}
        if int(record["trial"]) not in front:
            return
        t["front"] = {k: r for k, r in candidates.items() if k in front}
        self._write_pareto(pareto, hv, t["objectives"], t["reference_point"], t["front"])

    def _write_pareto(self, pareto, hv, objectives, reference_point, front: dict[int, dict]) -> None:
        atomic_write_text(self.path / "pareto.csv", pareto.to_csv(index=False))
        atomic_write_json(self.path / "pareto.json", {
            "objectives": objectives, "reference_point": reference_point, "hypervolume": hv,
            "candidates": json.loads(pareto.to_json(orient="records")),
            "configs": {k: r["config"] for k, r in sorted(front.items()) if r.get("config")},
        })


_CRC = "crc32"


@dataclass
class Front:
    """A run's trials (records and table) with their Pareto set and hypervolume."""

    records: list[Trial]
    trials: pd.DataFrame
    pareto: pd.DataFrame
    hypervolume: float
    objectives: dict[str, str]
    reference_point: dict[str, float]


def _line(record: dict) -> bytes:
    body = json.dumps({k: v for k, v in record.items() if k != _CRC}, default=str)
    crc = zlib.crc32(body.encode())
    return (body[:-1] + (", " if len(body) > 2 else "") + f'"{_CRC}": "{crc:08x}"}}\n').encode()


def _parse(line: bytes) -> Trial | None:
    """A trials.jsonl line as its record, or None if it is not one: not JSON, not a trial, or
    its checksum (where it has one: older runs have none) does not match the rest."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("trial"), int) and "status" in record):
        return None
    crc = record.pop(_CRC, None)
    if crc is not None and crc != f"{zlib.crc32(json.dumps(record, default=str).encode()):08x}":
        return None
    return Trial(record)


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


def hypervolume_reference(objectives: dict[str, str], max_acc_drop: float | None, baseline: dict) -> dict[str, float]:
    """The hypervolume's reference point: the uncompressed model's energy and size, and the
    lowest accuracy the constraints accept."""
    acc = baseline["accuracy"]
    ref = {"energy_reduction": 1.0, "accuracy": max(0.0, acc - (max_acc_drop / 100 if max_acc_drop is not None else acc)),
           "size_bytes": float(baseline["size_bytes"]), "latency_ms": float(baseline.get("latency_ms") or 0.0)}
    return {k: ref[k] for k in objectives}


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


#: objectives where less is better (the others: more)
LOWER_IS_BETTER = ("size_bytes", "latency_ms", "energy_mj", "accuracy_drop")


def best_of(pareto: pd.DataFrame, max_acc_drop: float | None = None,
            objective: str = "energy_reduction") -> pd.Series | None:
    """The Pareto candidate with the best ``objective`` (the highest energy reduction by
    default) among those within ``max_acc_drop``; ties go to the first listed. None when none is
    within it. What every "pick the best" (the API, the report, ``finetune --pick best``) uses."""
    rows = pareto if max_acc_drop is None else pareto[pareto["accuracy_drop"] <= max_acc_drop]
    if rows.empty:
        return None
    return rows.sort_values(objective, ascending=objective in LOWER_IS_BETTER, kind="stable").iloc[0]
