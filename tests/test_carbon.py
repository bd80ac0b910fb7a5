"""Carbon figures and the search's own energy record (no search needed)."""
import json
import math
import time
from importlib.resources import files

import pytest

from autocompress import UserError
from autocompress.carbon import (DEFAULT_PUE, WORLD_GCO2_KWH, break_even_inferences, candidate_figures,
                                 carbon_settings, country_intensity, footprint_g)
from autocompress.search_energy import SearchEnergyMeter, load_search_energy, rapl_readable


def test_the_default_grid_intensity_is_codecarbons_world_average_and_cited():
    per_source = json.loads(files("codecarbon").joinpath("data/private_infra/carbon_intensity_per_source.json").read_text())
    assert WORLD_GCO2_KWH == per_source["world_average"]
    s = carbon_settings()
    assert (s.grid_gco2_kwh, s.pue) == (WORLD_GCO2_KWH, DEFAULT_PUE)
    assert "IEA" in s.grid_source and per_source["world_average_source"] in s.grid_source
    assert "Uptime Institute" in s.pue_source


def test_explicit_figures_win_over_stored_ones_which_win_over_defaults():
    stored = {"grid_gco2_kwh": 120.0, "grid_source": "set by the user", "pue": 1.3, "queries": 5.0}
    assert carbon_settings(stored=stored).grid_gco2_kwh == 120.0
    assert carbon_settings(stored=stored).queries == 5.0
    s = carbon_settings(grid_gco2_kwh=50, stored=stored)
    assert (s.grid_gco2_kwh, s.pue) == (50.0, 1.3)
    fra = carbon_settings(country="fra", stored=stored)
    mix = json.loads(files("codecarbon").joinpath("data/private_infra/global_energy_mix.json").read_text())
    assert fra.grid_gco2_kwh == mix["FRA"]["carbon_intensity"] and "France" in fra.grid_source


@pytest.mark.parametrize("kwargs, expected", [
    (dict(pue=0.9), "--pue must be at least 1"),
    (dict(grid_gco2_kwh=float("nan")), "--grid-gco2-kwh must be 0 or more"),
    (dict(country="ZZZ"), "unknown country 'ZZZ'"),
    (dict(queries=-1), "--queries must be 0 or more"),
])
def test_bad_carbon_settings_are_user_errors(kwargs, expected):
    with pytest.raises(UserError, match=expected):
        carbon_settings(**kwargs)


def test_candidate_figures_break_even_and_footprint():
    s = carbon_settings(grid_gco2_kwh=400, pue=1.5, queries=2e6)
    f = candidate_figures(energy_mj=2.0, macs=1_000_000, settings=s)  # 2 mJ, 1 M MACs per inference
    assert f["energy_j"] == 2e-3
    assert f["kwh_per_million"] == pytest.approx(2e-3 * 1e6 / 3.6e6 * 1.5)  # 0.8333 kWh
    assert f["gco2e_per_million"] == pytest.approx(f["kwh_per_million"] * 400)
    assert f["inferences_per_j"] == pytest.approx(500)
    assert f["gops_per_w"] == pytest.approx(2e6 / 2e-3 / 1e9)  # 1 GOPS/W
    # a search of 1 kWh repaid by saving 1 mJ per inference: 3.6e9 inferences
    assert break_even_inferences(1.0, baseline_mj=3.0, candidate_mj=2.0) == pytest.approx(3.6e9)
    assert math.isinf(break_even_inferences(1.0, 2.0, 2.5))  # saves nothing
    assert break_even_inferences(None, 3.0, 2.0) is None  # search energy unknown
    # lifecycle: (1 kWh + 2e6 x 2 mJ) x PUE x grid
    assert footprint_g(1.0, 2.0, s) == pytest.approx((1.0 + 2e6 * 2e-3 / 3.6e6) * 1.5 * 400)


def test_country_lookup_takes_iso3_codes():
    assert country_intensity("DEU")[0] > country_intensity("FRA")[0]  # coal vs nuclear


@pytest.mark.parametrize("code", ["FRA", "DEU", "USA", "IND"])
def test_a_countrys_intensity_is_the_one_codecarbons_trackers_use(code):
    """The table comes through codecarbon's DataSource: the figure is what its own emissions
    code charges for one kWh in that country."""
    emissions = pytest.importorskip("codecarbon.core.emissions")
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    kg = emissions.Emissions(DataSource()).get_country_emissions(Energy.from_energy(kWh=1),
                                                                 GeoMetadata(country_iso_code=code))
    assert country_intensity(code)[0] == pytest.approx(kg * 1000)


def test_a_malformed_country_table_is_one_user_error(monkeypatch):
    from autocompress import carbon

    monkeypatch.setattr(carbon, "_energy_mix", lambda: {"FRA": {"country_name": "France", "carbon_intensity": "n/a"},
                                                        "DEU": "not an entry"})
    with pytest.raises(UserError, match="codecarbon has no grid intensity for FRA"):
        country_intensity("fra")
    with pytest.raises(UserError, match="unknown country 'DEU'"):
        country_intensity("DEU")

    def broken():
        raise ValueError("codecarbon's energy mix is not a table of countries")

    monkeypatch.setattr(carbon, "_energy_mix", broken)
    with pytest.raises(UserError, match="--country needs codecarbon's country data"):
        country_intensity("FRA")


def test_search_energy_parts_add_up_across_sessions_and_say_how(tmp_path):
    first = SearchEnergyMeter(tmp_path).start()
    time.sleep(0.3)
    first.update()
    mid = json.loads((tmp_path / "search_energy.json").read_text())["parts"]
    assert len(mid) == 1 and mid[0]["seconds"] >= 0.3  # written while running: a kill keeps it
    a = first.stop()
    b = SearchEnergyMeter(tmp_path).start().stop()  # a resumed session is a second part
    total = load_search_energy(tmp_path)
    assert len(total["parts"]) == 2
    assert total["total_kwh"] == pytest.approx(a["energy_kwh"] + b["energy_kwh"])
    assert a["energy_kwh"] > 0
    # measured only where a RAPL counter is readable; otherwise an estimate that says so
    if rapl_readable():
        assert a["method"].startswith(("measured", "estimated"))
    else:
        assert a["method"].startswith("estimated (codecarbon") and not a["measured"]
        assert "no readable RAPL counter" in a["method"]


def test_search_energy_without_codecarbon_says_it_is_unavailable(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_codecarbon(name, *args, **kwargs):
        if name.startswith("codecarbon"):
            raise ImportError("No module named 'codecarbon'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_codecarbon)
    part = SearchEnergyMeter(tmp_path).start().stop()
    assert part["energy_kwh"] is None and part["method"].startswith("unavailable (codecarbon: ImportError")
    assert load_search_energy(tmp_path)["total_kwh"] is None
