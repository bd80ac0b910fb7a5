"""Carbon, not only joules: what a candidate's energy per inference means at a grid intensity
and a data-centre PUE, and the lifecycle footprint of a search.

The footprint follows the lifecycle view of the green-AI literature (operational emissions of
both the development step and of serving)::

    footprint = (energy of the search itself + queries x energy per inference) x PUE x gCO2e/kWh

The energy per inference is the cost model's figure for the target (``modeled:<profile>``); the
search's own energy was spent on the machine that ran the search (see :mod:`autocompress.search_energy`).
Both are device-side energies; the PUE scales them to the facility and applies to both alike.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache

from autocompress._errors import UserError

__all__ = ["CarbonSettings", "carbon_settings", "candidate_figures", "break_even_inferences",
           "footprint_g", "WORLD_GCO2_KWH", "DEFAULT_PUE", "DEFAULT_QUERIES"]

J_PER_KWH = 3.6e6

#: codecarbon's fallback when it knows no figure for a place (its carbon_intensity_per_source.json,
#: "world_average"), citing IEA, Global Energy & CO2 Status Report 2019
WORLD_GCO2_KWH = 475.0
WORLD_SOURCE = ("world average (IEA, Global Energy & CO2 Status Report 2019, "
                "https://www.iea.org/reports/global-energy-co2-status-report-2019/emissions; codecarbon's default)")
#: Uptime Institute, Global Data Center Survey 2023: industry-average PUE 1.58 (flat at 1.55-1.59 since 2020)
DEFAULT_PUE = 1.58
PUE_SOURCE = ("industry average (Uptime Institute Global Data Center Survey 2023, "
              "https://intelligence.uptimeinstitute.com/resource/large-data-centers-are-mostly-more-efficient-analysis-confirms)")
#: a service answering about 32 queries a second for a year
DEFAULT_QUERIES = 1e9


@dataclass(frozen=True)
class CarbonSettings:
    grid_gco2_kwh: float = WORLD_GCO2_KWH
    pue: float = DEFAULT_PUE
    queries: float = DEFAULT_QUERIES
    grid_source: str = WORLD_SOURCE
    pue_source: str = PUE_SOURCE

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return f"{self.grid_gco2_kwh:g} gCO2e/kWh, PUE {self.pue:g}"


#: where codecarbon 2.x-3.x bundles the table; read directly only by a codecarbon without DataSource
_ENERGY_MIX_FILE = "data/private_infra/global_energy_mix.json"


@lru_cache(maxsize=1)
def _energy_mix() -> dict:
    """codecarbon's per-country electricity data (Our World in Data), keyed by ISO 3166 alpha-3.

    codecarbon's declared public API is its trackers, which take a country but do not give its
    intensity; the table comes through ``codecarbon.input.DataSource.get_global_energy_mix_data``,
    the accessor its own trackers price a country's grid with (it knows where the file lives in
    each release). Only where that accessor is missing is the bundled file read by its path."""
    try:
        from codecarbon.input import DataSource
    except ImportError:
        DataSource = None
    if DataSource is not None and hasattr(DataSource, "get_global_energy_mix_data"):
        mix = DataSource().get_global_energy_mix_data()
    else:
        from importlib.resources import files

        mix = json.loads(files("codecarbon").joinpath(_ENERGY_MIX_FILE).read_text())
    if not isinstance(mix, dict) or not mix:
        raise ValueError("codecarbon's energy mix is not a table of countries")
    return mix


def _intensity(entry) -> float | None:
    """A country's gCO2e/kWh from its entry, or None when it holds no usable figure."""
    try:
        value = float(entry["carbon_intensity"])
    except (TypeError, KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def country_intensity(country: str) -> tuple[float, str]:
    """Grid intensity (gCO2e/kWh) of a country by its ISO 3166 alpha-3 code, and its source."""
    try:
        mix = _energy_mix()
    except Exception as e:  # noqa: BLE001 - codecarbon missing, its data moved or malformed
        raise UserError(f"--country needs codecarbon's country data ({type(e).__name__}); give --grid-gco2-kwh instead") from None
    code = country.strip().upper()
    entry = mix.get(code)
    grid = _intensity(entry)
    if grid is None:
        import difflib

        names = {str(v.get("country_name", "")).lower(): k for k, v in mix.items() if isinstance(v, dict)}
        close = difflib.get_close_matches(country.lower(), list(names), n=1)
        hint = f" (did you mean {names[close[0]]}, {close[0].title()}?)" if close else ""
        if isinstance(entry, dict):
            raise UserError(f"codecarbon has no grid intensity for {code}; give --grid-gco2-kwh instead")
        raise UserError(f"unknown country {country!r}: give an ISO 3166 alpha-3 code such as USA, FRA, DEU{hint}")
    return grid, (f"{entry.get('country_name', code)} {entry.get('year', '')} grid "
                  "(Our World in Data, as bundled in codecarbon)")


def carbon_settings(grid_gco2_kwh: float | None = None, pue: float | None = None, country: str | None = None,
                    queries: float | None = None, stored: dict | None = None) -> CarbonSettings:
    """Resolve what the user set (explicit figures win, then ``country``, then what the search
    stored, then the defaults), checking each figure."""
    stored = stored or {}
    if grid_gco2_kwh is not None and country is not None:
        raise UserError("give --grid-gco2-kwh or --country, not both")
    if grid_gco2_kwh is not None:
        grid, source = float(grid_gco2_kwh), "set by the user"
    elif country is not None:
        grid, source = country_intensity(country)
    elif stored.get("grid_gco2_kwh") is not None:
        grid, source = float(stored["grid_gco2_kwh"]), stored.get("grid_source", "set by the user")
    else:
        grid, source = WORLD_GCO2_KWH, WORLD_SOURCE
    if pue is not None:
        pue_, pue_source = float(pue), "set by the user"
    elif stored.get("pue") is not None:
        pue_, pue_source = float(stored["pue"]), stored.get("pue_source", "set by the user")
    else:
        pue_, pue_source = DEFAULT_PUE, PUE_SOURCE
    q = float(queries if queries is not None else stored.get("queries", DEFAULT_QUERIES))
    if not math.isfinite(grid) or grid < 0:
        raise UserError(f"--grid-gco2-kwh must be 0 or more, not {grid:g}")
    if not math.isfinite(pue_) or pue_ < 1:
        raise UserError(f"--pue must be at least 1 (facility energy / IT energy), not {pue_:g}")
    if not math.isfinite(q) or q < 0:
        raise UserError(f"--queries must be 0 or more, not {q:g}")
    return CarbonSettings(grid, pue_, q, source, pue_source)


def candidate_figures(energy_mj: float, macs: int, settings: CarbonSettings) -> dict:
    """Per-inference energy and what it means in kWh and CO2e per million inferences
    (facility level: x PUE) and as performance per watt (device level: no PUE)."""
    joules = energy_mj / 1e3
    kwh_per_m = joules * 1e6 / J_PER_KWH * settings.pue
    return {"energy_j": joules,
            "kwh_per_million": kwh_per_m,
            "gco2e_per_million": kwh_per_m * settings.grid_gco2_kwh,
            "inferences_per_j": 1.0 / joules if joules > 0 else math.inf,
            # 2 operations per MAC; ops per joule = ops per second per watt
            "gops_per_w": 2.0 * macs / joules / 1e9 if joules > 0 else math.inf}


def break_even_inferences(search_kwh: float | None, baseline_mj: float, candidate_mj: float) -> float | None:
    """Inferences after which the candidate's savings repay the search's own energy; inf when
    it saves nothing, None when the search energy is unknown."""
    if search_kwh is None:
        return None
    saving_j = (baseline_mj - candidate_mj) / 1e3
    if saving_j <= 0:
        return math.inf
    return search_kwh * J_PER_KWH / saving_j


def footprint_g(search_kwh: float, energy_mj: float, settings: CarbonSettings) -> float:
    """(search energy + queries x energy per inference) x PUE x grid intensity, in gCO2e."""
    kwh = search_kwh + settings.queries * energy_mj / 1e3 / J_PER_KWH
    return kwh * settings.pue * settings.grid_gco2_kwh
