"""The search's own energy, kept in the run directory (``search_energy.json``).

codecarbon's offline tracker follows the machine while trials run: it reads RAPL energy
counters where the kernel exposes them (a measurement) and otherwise estimates CPU power from
the machine's load and the CPU's TDP, and RAM power from its size (an estimate); the record says
which. It is machine-wide, so Ray's worker processes count, and so does anything else running
on the machine at the time. Each session of a run (the first, every resume) is one part; the
part in progress is rewritten after every trial, so a killed search keeps what it had spent.
Baseline training is not counted: its weights are cached and reused across searches.
"""
from __future__ import annotations

import glob
import json
import logging
import time
from pathlib import Path

from autocompress.utils import atomic_write_json

__all__ = ["SearchEnergyMeter", "load_search_energy", "rapl_readable"]

FILE = "search_energy.json"


def rapl_readable() -> bool:
    """Is any RAPL (powercap) energy counter readable here?"""
    for path in glob.glob("/sys/class/powercap/*/energy_uj"):
        try:
            with open(path) as f:
                f.read()
            return True
        except OSError:
            continue
    return False


def load_search_energy(run_dir: str | Path) -> dict | None:
    """The parts recorded so far and their total (kWh), or None when nothing was recorded."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    parts = data.get("parts", [])
    known = [p for p in parts if p.get("energy_kwh") is not None]
    data["total_kwh"] = sum(p["energy_kwh"] for p in known) if known else None
    data["seconds"] = sum(p.get("seconds") or 0 for p in parts)
    methods = sorted({p["method"] for p in parts})
    data["method"] = "; ".join(methods) if methods else "unknown"
    data["measured"] = bool(parts) and all(p.get("measured") for p in known) and bool(known)
    return data


class SearchEnergyMeter:
    """Tracks one session of a search; ``update()`` after every trial, ``stop()`` at the end.
    Never raises: without codecarbon (or when it fails) the part says why it has no figure."""

    def __init__(self, run_dir: str | Path, country: str | None = None):
        self.path = Path(run_dir) / FILE
        self.country = (country or "USA").upper()  # codecarbon needs one; we use its energy, not its CO2
        self.tracker = None
        self.part: dict = {}
        self.parts: list[dict] = []

    def start(self) -> "SearchEnergyMeter":
        if self.path.exists():
            self.parts = json.loads(self.path.read_text()).get("parts", [])
        self.part = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": 0.0, "energy_kwh": None,
                     "measured": False, "method": "unavailable"}
        self._t0 = time.perf_counter()
        try:
            import codecarbon

            # it logs at INFO at import and before its own log_level applies
            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            from codecarbon import OfflineEmissionsTracker
            from codecarbon.output_methods.base_output import BaseOutput

            class Latest(BaseOutput):  # codecarbon hands every flush / stop to its output handlers
                data = None

                def out(self, total, delta):
                    Latest.data = total

            self._latest = Latest
            self.tracker = OfflineEmissionsTracker(country_iso_code=self.country, save_to_file=False,
                                                   log_level="error", measure_power_secs=5,
                                                   tracking_mode="machine", allow_multiple_runs=True,
                                                   output_handlers=[Latest()])
            self.tracker.start()
            conf = getattr(self.tracker, "_conf", {}) or {}
            hardware = [str(h) for h in conf.get("hardware", [])]
            measured = rapl_readable() and any("rapl" in h.lower() for h in hardware)
            what = ", ".join(hardware) or "no hardware found"
            if measured:
                self.part["method"] = (f"measured (RAPL counters via codecarbon {codecarbon.__version__}: {what}; "
                                       f"machine-wide)")
            else:
                self.part["method"] = (f"estimated (codecarbon {codecarbon.__version__}: {what} on "
                                       f"{conf.get('cpu_model') or 'unknown CPU'}, {conf.get('cpu_count', '?')} cores; "
                                       "CPU power from machine load x TDP, RAM power from its size; no readable RAPL "
                                       "counter; machine-wide)")
            self.part["measured"] = measured
        except Exception as e:  # noqa: BLE001 - the search must run without an energy figure
            self.tracker = None
            self.part["method"] = f"unavailable (codecarbon: {type(e).__name__}: {' '.join(str(e).split())[:120]})"
        self._write()
        return self

    def update(self) -> None:
        """Record what was spent so far (after each trial)."""
        self._read(final=False)
        self._write()

    def stop(self) -> dict:
        self._read(final=True)
        self._write()
        self.tracker = None
        return self.part

    def _read(self, final: bool) -> None:
        self.part["seconds"] = round(time.perf_counter() - self._t0, 3)
        if self.tracker is None:
            return
        try:
            if final:
                self.tracker.stop()
            else:
                self.tracker.flush()
            data = self._latest.data
            if data is None:
                return
            self.part.update(energy_kwh=float(data.energy_consumed), cpu_kwh=float(data.cpu_energy),
                             ram_kwh=float(data.ram_energy), gpu_kwh=float(data.gpu_energy),
                             cpu_power_w=float(data.cpu_power), ram_power_w=float(data.ram_power))
        except Exception as e:  # noqa: BLE001
            self.part["error"] = f"{type(e).__name__}: {e}"[:200]

    def _write(self) -> None:
        atomic_write_json(self.path, {"parts": [*self.parts, self.part],
                                      "note": "energy of the machine that ran the trials (not the target); "
                                              "baseline training not included"})
