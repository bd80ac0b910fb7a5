"""The report of a search, built from its run directory alone.

``autocompress report RUN_DIR`` (and the end of every search) reads settings.json,
baseline.json, trials.jsonl, pareto.json, layers.json and search_energy.json, and writes
report.html (self-contained: plots embedded as data URIs, no external URL) and the plots as PNG
files beside it. Nothing is re-run, so it works on a finished or a killed run alike.

Every figure says where it comes from: energy and latency are the cost model's
(``modeled:<profile>``); carbon figures name the grid intensity and PUE used and their source;
the search's own energy says whether it was measured or estimated.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from autocompress._errors import NothingFeasible, UserError
from autocompress.carbon import (CarbonSettings, break_even_inferences, candidate_figures, carbon_settings,
                                 footprint_g)
from autocompress.search.rundir import RunDirectory, pareto_of, trials_frame
from autocompress.search_energy import load_search_energy
from autocompress.utils import atomic_write_text

__all__ = ["Report", "build_report", "CARBON_COLUMNS"]

CARBON_COLUMNS = ["energy_j", "kwh_per_million", "gco2e_per_million", "inferences_per_j", "gops_per_w",
                  "break_even_inferences", "footprint_g"]
PLOTS = ("pareto.png", "hypervolume.png", "layers.png")


@dataclass
class Report:
    run_dir: Path
    settings: dict
    baseline: dict
    records: list[dict]
    trials: pd.DataFrame
    pareto: pd.DataFrame  # Pareto candidates with their carbon figures (CARBON_COLUMNS)
    hypervolume: float
    hv_curve: pd.DataFrame  # trial, hypervolume of the feasible trials up to it
    carbon: CarbonSettings
    search_energy: dict | None
    baseline_figures: dict
    pick: int | None
    pick_reason: str
    layers: pd.DataFrame | None  # per-layer view of the picked candidate
    layers_note: str
    uniform: set = field(default_factory=set)  # trials whose every knob has one value across layers

    # -- the facts ---------------------------------------------------------------------------
    @property
    def origin(self) -> str:
        return self.baseline.get("cost_origin") or "modeled"

    @property
    def picked(self) -> dict | None:
        return next((r for r in self.records if int(r["trial"]) == self.pick), None) if self.pick is not None else None

    @property
    def search_kwh(self) -> float | None:
        return (self.search_energy or {}).get("total_kwh")

    def picked_figures(self) -> dict | None:
        rec = self.picked
        if rec is None or not rec.get("metrics"):
            return None
        m = rec["metrics"]
        fig = candidate_figures(m["energy_mj"], m["macs"], self.carbon)
        fig["break_even_inferences"] = break_even_inferences(self.search_kwh, self.baseline["energy_mj"], m["energy_mj"])
        fig["footprint_g"] = footprint_g(self.search_kwh or 0.0, m["energy_mj"], self.carbon)
        return fig

    def summary_lines(self) -> list[str]:
        inp = self.settings.get("inputs", {})
        s = self.settings.get("search", {})
        n, ok = len(self.trials), int((self.trials["status"] == "ok").sum()) if len(self.trials) else 0
        lines = [f"{inp.get('model_desc') or inp.get('model')} on {inp.get('target')}, data {inp.get('data')}; "
                 f"{n} of {s.get('trials', '?')} trials done, {ok} feasible, {len(self.pareto)} on the Pareto set, "
                 f"hypervolume {self.hypervolume:.4f}"]
        from autocompress.evaluate import origin_sentence

        lines.append(origin_sentence(self.origin, self.baseline.get("energy_origin") or self.origin))
        lines.append(f"Carbon: grid {self.carbon.grid_gco2_kwh:g} gCO2e/kWh ({self.carbon.grid_source}); "
                     f"PUE {self.carbon.pue:g} ({self.carbon.pue_source}); kWh and CO2e are at the facility (x PUE), "
                     f"performance per watt at the device (GOPS/W = 2 x MACs per inference / energy per inference).")
        se = self.search_energy
        if se and se.get("total_kwh") is not None:
            lines.append(f"Search's own energy: {se['total_kwh'] * 1e3:.3f} Wh over {se['seconds']:.0f} s of trials, "
                         f"{se['method']}.")
        else:
            lines.append(f"Search's own energy: unknown ({(se or {}).get('method', 'not recorded for this run')}).")
        fig = self.picked_figures()
        if fig is not None:
            be = fig["break_even_inferences"]
            be_text = ("unknown (the search's energy was not recorded)" if be is None
                       else "never (it saves no energy)" if math.isinf(be)
                       else f"{be:,.0f} inferences (search energy spent on this machine / energy saved per "
                            f"inference, modeled on {inp.get('target')})")
            lines.append(f"Chosen candidate: trial {self.pick} ({self.pick_reason}). Break-even: {be_text}.")
            base_fp = footprint_g(0.0, self.baseline["energy_mj"], self.carbon)
            lines.append(f"Footprint at {self.carbon.queries:,.0f} queries: {fig['footprint_g'] / 1e3:,.3f} kgCO2e "
                         f"with trial {self.pick} (search included) vs {base_fp / 1e3:,.3f} kgCO2e uncompressed.")
        return lines

    # -- terminal ------------------------------------------------------------------------------
    def rich_table(self):
        from rich.table import Table

        o = self.origin
        t = Table(title=f"Pareto set ({len(self.pareto)} candidates, hypervolume {self.hypervolume:.4f}); "
                        f"carbon at {self.carbon.label}", title_justify="left")
        for col in ("trial", "accuracy %", "drop pp", "size MB", f"energy mJ\n{o}", f"latency ms\n{o}",
                    f"energy\nreduction", "SQNR dB", "kWh per\nM inf", "kgCO2e per\nM inf", "GOPS/W",
                    "break-even\ninferences"):
            t.add_column(col, justify="right")
        b, bf = self.baseline, self.baseline_figures
        t.add_row("base", f"{100 * b['accuracy']:.2f}", "0.00", f"{b['size_bytes'] / 1e6:.2f}", f"{b['energy_mj']:.4f}",
                  f"{b['latency_ms']:.4f}", "1.00x", "-", f"{bf['kwh_per_million']:.4g}",
                  f"{bf['gco2e_per_million'] / 1e3:.4g}", f"{bf['gops_per_w']:.1f}", "-", style="dim")
        for _, r in self.pareto.iterrows():
            t.add_row(str(int(r["trial"])), f"{100 * r['accuracy']:.2f}", f"{r['accuracy_drop']:.2f}",
                      f"{r['size_bytes'] / 1e6:.2f}", f"{r['energy_mj']:.4f}", f"{r['latency_ms']:.4f}",
                      f"{r['energy_reduction']:.2f}x", _sqnr(r["sqnr_db"]), f"{r['kwh_per_million']:.4g}",
                      f"{r['gco2e_per_million'] / 1e3:.4g}", f"{r['gops_per_w']:.1f}",
                      _count(r["break_even_inferences"]),
                      style="bold" if int(r["trial"]) == self.pick else None)
        return t

    # -- files ---------------------------------------------------------------------------------
    def plots(self) -> dict[str, bytes]:
        """PNG bytes of each plot (no pyplot: no global state, safe in threads)."""
        out = {"pareto.png": _png(self._plot_pareto), "hypervolume.png": _png(self._plot_hv)}
        if self.layers is not None:
            out["layers.png"] = _png(self._plot_layers)
        return out

    def write(self) -> Path:
        """Write the PNG plots and report.html into the run directory; returns the HTML's path."""
        pngs = self.plots()
        for name in PLOTS:  # a plot that no longer applies must not linger from an earlier report
            if name not in pngs:
                (self.run_dir / name).unlink(missing_ok=True)
        for name, data in pngs.items():
            tmp = self.run_dir / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.run_dir / name)
        path = self.run_dir / "report.html"
        atomic_write_text(path, self.html(pngs))
        return path

    # -- plots -----------------------------------------------------------------------------------
    def _plot_pareto(self, fig):
        ax = fig.add_subplot(1, 1, 1)
        t = self.trials
        done = t[t["energy_reduction"].notna() & t["accuracy"].notna() & t["duplicate_of"].isna()]
        ok = done[done["status"] == "ok"]
        bad = done[done["status"] != "ok"]
        if len(bad):
            ax.scatter(bad["energy_reduction"], 100 * bad["accuracy"], marker="x", color="0.7", s=22,
                       label="infeasible (breaks a constraint)")
        sizes = pd.concat([ok["size_bytes"], pd.Series([self.baseline["size_bytes"]])]) / 1e6
        norm = _norm(sizes)
        if len(ok):
            sc = ax.scatter(ok["energy_reduction"], 100 * ok["accuracy"], c=ok["size_bytes"] / 1e6, cmap="viridis",
                            norm=norm, s=26, alpha=0.75, label="feasible")
            fig.colorbar(sc, ax=ax, label="model size (MB)")
        p = self.pareto.sort_values("energy_reduction")
        if len(p):
            ax.step(p["energy_reduction"], 100 * p["accuracy"], where="post", color="k", lw=0.8, alpha=0.6)
            ax.scatter(p["energy_reduction"], 100 * p["accuracy"], c=p["size_bytes"] / 1e6, cmap="viridis",
                       norm=norm, s=70, edgecolors="k", linewidths=1.2, label="Pareto set", zorder=3)
        uni = ok[ok["trial"].isin(self.uniform)]
        if len(uni):
            ax.scatter(uni["energy_reduction"], 100 * uni["accuracy"], marker="D", facecolors="none",
                       edgecolors="tab:orange", s=90, linewidths=1.5, label="uniform config", zorder=4)
        ax.scatter([1.0], [100 * self.baseline["accuracy"]], marker="*", s=260, color="tab:red", edgecolors="k",
                   label="uncompressed baseline", zorder=5)
        drop = (self.settings.get("search", {}).get("constraints") or {}).get("max_acc_drop")
        lo, hi = ax.get_ylim()
        if drop is not None and 100 * self.baseline["accuracy"] - drop >= lo - 0.25 * (hi - lo):  # else off the chart
            ax.axhline(100 * self.baseline["accuracy"] - drop, color="tab:red", ls="--", lw=0.8,
                       label=f"accuracy floor (drop <= {drop:g} pp)")
        rec = self.picked
        if rec is not None and rec.get("metrics") and rec["metrics"].get("accuracy") is not None:
            ax.scatter([rec["metrics"]["energy_reduction"]], [100 * rec["metrics"]["accuracy"]], s=260,
                       facecolors="none", edgecolors="tab:blue", linewidths=2, label=f"chosen: trial {self.pick}", zorder=6)
        ax.set_xlabel(f"energy reduction vs uncompressed (x, {self.origin})")
        ax.set_ylabel(f"{self.settings.get('metric', 'top1')} accuracy (%)")
        ax.set_title("Energy reduction vs accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")

    def _plot_hv(self, fig):
        ax = fig.add_subplot(1, 1, 1)
        c = self.hv_curve
        if len(c):
            ax.step(c["trial"] + 1, c["hypervolume"], where="post", color="tab:blue")
            ax.plot(c["trial"] + 1, c["hypervolume"], "o", ms=3, color="tab:blue")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trials finished")
        ax.set_ylabel("hypervolume of the feasible set")
        objs = ", ".join(f"{k} ({v})" for k, v in (self.settings.get("search", {}).get("objectives") or {}).items())
        ax.set_title(f"Hypervolume against trials\n{objs}", fontsize=9)
        ax.grid(alpha=0.3)

    def _plot_layers(self, fig):
        lay = self.layers
        panels = [("prune_ratio", "pruning ratio"), ("bits", "bits (w / a)"), ("energy_share", "energy share (%)")]
        if "rank" in lay:
            panels.insert(2, ("rank", "rank"))
        axes = fig.subplots(len(panels), 1, sharex=True)
        x = np.arange(len(lay))
        for ax, (col, label) in zip(axes, panels):
            if col == "bits":
                ax.bar(x - 0.2, lay["weight_bits"].fillna(32), 0.4, label="weights")
                ax.bar(x + 0.2, lay["activation_bits"].fillna(32), 0.4, label="activations")
                ax.legend(fontsize=7)
            elif col == "energy_share":
                ax.bar(x - 0.2, 100 * lay["baseline_energy_share"], 0.4, color="0.6", label="uncompressed")
                ax.bar(x + 0.2, 100 * lay["energy_share"], 0.4, color="tab:green", label=f"trial {self.pick}")
                ax.legend(fontsize=7)
            else:
                ax.bar(x, lay[col].fillna(0), color="tab:purple")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3, axis="y")
        axes[-1].set_xticks(x, lay["layer"], rotation=90, fontsize=6)
        axes[0].set_title(f"Per layer: trial {self.pick} ({self.origin} energy)")

    # -- HTML --------------------------------------------------------------------------------------
    def html(self, pngs: dict[str, bytes]) -> str:
        e = html.escape
        inp = self.settings.get("inputs", {})

        def img(name, alt):
            if name not in pngs:
                return ""
            data = base64.b64encode(pngs[name]).decode()
            return f'<figure><img id="{e(name.split(".")[0])}" alt="{e(alt)}" src="data:image/png;base64,{data}"><figcaption>{e(alt)} ({e(name)})</figcaption></figure>'

        sensitivity_html = ""
        if (self.run_dir / "sensitivity.png").exists():  # written by a surrogate-guided search
            pngs = {**pngs, "sensitivity.png": (self.run_dir / "sensitivity.png").read_bytes()}
            sensitivity_html = ("<h2>Sensitivity</h2><p>The accuracy drop each value of each knob does alone "
                                "(the rest least compressing), measured before the trials on calibration images of "
                                "the validation split; the accuracy predictor is built on it (sensitivity.csv).</p>"
                                + img("sensitivity.png", "Accuracy drop of each knob value alone"))
        o = self.origin
        head = ["trial", "accuracy %", "drop pp", "size MB", f"energy mJ ({o})", f"latency ms ({o})",
                "energy reduction", "SQNR dB", "energy J / inf", "kWh / M inf", "gCO2e / M inf", "inf / J", "GOPS/W",
                "break-even inferences", f"footprint kgCO2e at {self.carbon.queries:,.0f} queries"]
        b, bf = self.baseline, self.baseline_figures
        rows = [_tr(["baseline", f"{100 * b['accuracy']:.2f}", "0.00", f"{b['size_bytes'] / 1e6:.3f}",
                     f"{b['energy_mj']:.5f}", f"{b['latency_ms']:.5f}", "1.00x", "-", f"{bf['energy_j']:.4g}",
                     f"{bf['kwh_per_million']:.4g}", f"{bf['gco2e_per_million']:.4g}", f"{bf['inferences_per_j']:.4g}",
                     f"{bf['gops_per_w']:.2f}", "-", f"{bf['footprint_g'] / 1e3:.4g}"], 'class="baseline"')]
        for _, r in self.pareto.iterrows():
            trial = int(r["trial"])
            rows.append(_tr([str(trial), f"{100 * r['accuracy']:.2f}", f"{r['accuracy_drop']:.2f}",
                             f"{r['size_bytes'] / 1e6:.3f}", f"{r['energy_mj']:.5f}", f"{r['latency_ms']:.5f}",
                             f"{r['energy_reduction']:.2f}x", _sqnr(r["sqnr_db"]), f"{r['energy_j']:.4g}",
                             f"{r['kwh_per_million']:.4g}", f"{r['gco2e_per_million']:.4g}", f"{r['inferences_per_j']:.4g}",
                             f"{r['gops_per_w']:.2f}", _count(r["break_even_inferences"]), f"{r['footprint_g'] / 1e3:.4g}"],
                            f'data-trial="{trial}"' + (' class="chosen"' if trial == self.pick else "")))
        pareto_html = (f'<table id="pareto-table"><thead>{_tr(head, th=True)}</thead><tbody>{"".join(rows)}</tbody></table>'
                       if len(self.pareto) else "<p><b>No feasible candidate yet.</b></p>")

        if self.layers is not None:
            cols = [c for c in ("layer", "kind", "prune_ratio", "original_out_channels", "out_channels", "weight_bits",
                                "activation_bits", "rank", "macs", "params", "latency_ms", "energy_mj", "energy_share",
                                "baseline_energy_share") if c in self.layers]
            lrows = "".join(_tr([_cell(r[c], c) for c in cols]) for _, r in self.layers.iterrows())
            layers_html = (f'{img("layers.png", f"Per-layer view of trial {self.pick}")}'
                           f'<table id="layer-table"><thead>{_tr(cols, th=True)}</thead><tbody>{lrows}</tbody></table>')
        else:
            layers_html = ""
        notes = "".join(f"<li>{e(n)}</li>" for n in self.settings.get("notes", []))
        summary = "".join(f"<p>{e(line)}</p>" for line in self.summary_lines())
        se = self.search_energy or {}
        parts = "".join(_tr([p.get("started", ""), f"{p.get('seconds') or 0:.0f}",
                             "-" if p.get("energy_kwh") is None else f"{p['energy_kwh'] * 1e3:.4f}", p.get("method", "")])
                        for p in se.get("parts", []))
        energy_html = (f'<table id="search-energy"><thead>{_tr(["session started", "seconds", "Wh", "how"], th=True)}'
                       f"</thead><tbody>{parts}</tbody></table>" if parts else "<p>No record of the search's own energy.</p>")
        title = f"autocompress report: {inp.get('model')} on {inp.get('target')}"
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
tr.baseline {{ color: #777; }} tr.chosen {{ font-weight: bold; background: #eef5ff; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ font-size: 12px; color: #555; }}
</style></head><body>
<h1>{e(title)}</h1>
<section id="summary">{summary}</section>
<h2>Pareto front</h2>
{img("pareto.png", "Energy reduction vs accuracy; colour: model size; star: uncompressed baseline")}
{pareto_html}
<h2>The search's own energy and the break-even</h2>
<p>Footprint = (energy of the search + queries x energy per inference) x PUE x grid intensity
({e(self.carbon.label)}). Break-even = search energy / (baseline energy per inference - candidate energy per
inference). The per-inference figures are {e(o)} on the target; the search energy was spent on the machine
that ran the trials.</p>
{energy_html}
<h2>Hypervolume against trials</h2>
{img("hypervolume.png", "Hypervolume of the feasible set after each trial")}
{sensitivity_html}
<h2>Per-layer view: trial {e(str(self.pick))}</h2>
<p>{e(self.layers_note)}</p>
{layers_html}
<h2>Notes</h2><ul>{notes}</ul>
<p>Run directory: {e(str(self.run_dir))}</p>
</body></html>
"""


# ------------------------------------------------------------------------------------------------
def build_report(run_dir: str | Path, *, pick: int | None = None, carbon: CarbonSettings | None = None,
                 max_acc_drop: float | None = None) -> Report:
    """Everything the report shows, from the run directory alone."""
    rd = RunDirectory(run_dir)
    if not (rd.path / "settings.json").is_file() or not (rd.path / "baseline.json").is_file():
        raise UserError(f"{run_dir} is not a run directory (no settings.json / baseline.json)")
    settings, baseline, records = rd.settings, rd.baseline, rd.trials()
    carbon = carbon or carbon_settings(stored=settings.get("carbon"))
    frame = trials_frame(records)
    objectives = (settings.get("search") or {}).get("objectives") or {"energy_reduction": "max", "accuracy": "max"}
    pj_path = rd.path / "pareto.json"
    ref = json.loads(pj_path.read_text()).get("reference_point") if pj_path.exists() else None
    ref = ref or _reference_point(settings, baseline, objectives)
    # recomputed from trials.jsonl (the record of truth), so a run killed between writes agrees
    pareto, hv = pareto_of(frame, objectives, ref)
    search_energy = load_search_energy(rd.path)
    search_kwh = (search_energy or {}).get("total_kwh")

    extra = []
    for _, r in pareto.iterrows():
        f = candidate_figures(r["energy_mj"], r["macs"], carbon)
        f["break_even_inferences"] = break_even_inferences(search_kwh, baseline["energy_mj"], r["energy_mj"])
        f["footprint_g"] = footprint_g(search_kwh or 0.0, r["energy_mj"], carbon)
        extra.append(f)
    pareto = pd.concat([pareto.reset_index(drop=True), pd.DataFrame(extra, columns=CARBON_COLUMNS)], axis=1)
    base_fig = candidate_figures(baseline["energy_mj"], baseline["macs"], carbon)
    base_fig["footprint_g"] = footprint_g(0.0, baseline["energy_mj"], carbon)

    hv_rows, seen = [], []
    for t in frame["trial"]:
        seen.append(t)
        hv_rows.append({"trial": int(t), "hypervolume": pareto_of(frame[frame["trial"].isin(seen)], objectives, ref)[1]})

    if pick is None:
        rows = pareto if max_acc_drop is None else pareto[pareto["accuracy_drop"] <= max_acc_drop]
        if len(rows):
            pick = int(rows.sort_values("energy_reduction", ascending=False, kind="stable").iloc[0]["trial"])
            limit = max_acc_drop if max_acc_drop is not None else (settings["search"]["constraints"] or {}).get("max_acc_drop")
            reason = ("highest energy reduction on the Pareto set" +
                      (f" within an accuracy drop of {limit:g} pp" if limit is not None else ""))
        elif max_acc_drop is not None and len(pareto):
            raise NothingFeasible(f"no Pareto candidate in {run_dir} has an accuracy drop of {max_acc_drop:g} pp or less")
        else:
            reason = "no feasible candidate"
    else:
        if not any(int(r["trial"]) == int(pick) and r.get("config") for r in records):
            raise UserError(f"{run_dir} has no trial {pick} with a config")
        reason = "picked by the user"
    layers, note = (None, "No candidate to show.") if pick is None else _layer_view(rd, settings, records, pick)
    return Report(rd.path, settings, baseline, records, frame, pareto, hv, pd.DataFrame(hv_rows, columns=["trial", "hypervolume"]),
                  carbon, search_energy, base_fig, pick, reason, layers, note, _uniform(records))


def _reference_point(settings: dict, baseline: dict, objectives: dict) -> dict:
    drop = ((settings.get("search") or {}).get("constraints") or {}).get("max_acc_drop")
    ref = {"energy_reduction": 1.0,
           "accuracy": max(0.0, baseline["accuracy"] - (drop / 100 if drop is not None else baseline["accuracy"])),
           "size_bytes": float(baseline["size_bytes"]), "latency_ms": float(baseline["latency_ms"])}
    return {k: ref[k] for k in objectives}


def _layers_of(rd: RunDirectory, settings: dict):
    """(LayerTable, profile) from layers.json, or, for a run that predates it, traced again from
    the model's architecture (weights are not needed for shapes)."""
    saved = rd.layers()
    if saved is not None:
        return saved, "from layers.json"
    inp = settings.get("inputs", {})
    if str(inp.get("model", "")).endswith("(user model)"):
        raise UserError("this run has no layers.json and its model was a Python object")
    from autocompress.api import prepare

    prep = prepare(inp["model"], None, inp.get("target_spec") or inp["target"], input_shape=tuple(inp["input_shape"]),
                   num_classes=inp.get("num_classes"), stem=inp.get("stem"), baseline=None, log=lambda s: None)
    return (prep.table, prep.profile), "traced again from the model (this run has no layers.json)"


def _layer_view(rd: RunDirectory, settings: dict, records: list[dict], trial: int):
    """Per layer: pruning ratio, kept channels, bits, rank (when the config has one), MACs and
    the modeled latency and energy, with each layer's share of the candidate's energy."""
    from autocompress.config import CompressionConfig
    from autocompress.export import layer_table
    from autocompress.hardware import CostModel

    record = next(r for r in records if int(r["trial"]) == int(trial) and r.get("config"))
    try:
        (table, profile), how = _layers_of(rd, settings)
    except Exception as e:  # noqa: BLE001 - the rest of the report stands without this view
        return None, f"Per-layer view unavailable: {' '.join(str(e).split())[:200]}"
    raw = record["config"]
    config = CompressionConfig.from_dict(raw)
    frame = layer_table(table, config)
    for column in ("rank", "dropped"):  # low rank and depth are optional: show them only when used
        if not frame[column].any():
            frame = frame.drop(columns=column)
    if not hasattr(profile, "fabric"):  # a measured target: no per-layer model to split its figures
        return frame, (f"Layer table {how}. {profile.name} measures whole models, so there is no per-layer "
                       f"latency or energy.")
    cm = CostModel(table, profile)
    cost = cm.cost(config, detail=True)
    base = cm.cost(cm.reference(), detail=True)
    frame["latency_ms"] = cost.layers["latency_ms"]
    frame["energy_mj"] = cost.layers["energy_mj"]
    frame["energy_share"] = cost.layers["energy_mj"] / cost.layers["energy_mj"].sum()
    frame["baseline_energy_share"] = base.layers["energy_mj"] / base.layers["energy_mj"].sum()
    note = (f"Layer table {how}; energy and latency per layer {cost.origin} (total {cost.energy_j * 1e3:.5f} mJ, "
            f"recorded for the trial: {(record.get('metrics') or {}).get('energy_mj', float('nan')):.5f} mJ). "
            f"Energy share: the layer's part of the candidate's energy (and of the uncompressed model's).")
    return frame, note


def _uniform(records: list[dict]) -> set:
    """Trials in which every knob has one value across all its layers (uniform configs)."""
    out = set()
    for r in records:
        by_knob: dict[str, set] = {}
        for name, v in (r.get("params") or {}).items():
            by_knob.setdefault(name.split(":")[0], set()).add(v)
        if len(r.get("params") or {}) > len(by_knob) and all(len(v) == 1 for v in by_knob.values()):
            out.add(int(r["trial"]))
    return out


def _png(draw) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5) if draw.__name__ != "_plot_layers" else (11, 8), dpi=100)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _norm(sizes: pd.Series):
    from matplotlib.colors import Normalize

    lo, hi = float(sizes.min()), float(sizes.max())
    return Normalize(lo, hi if hi > lo else lo + 1e-9)


def _sqnr(x) -> str:
    return "inf" if x is None or (isinstance(x, float) and math.isnan(x)) or x >= 999 else f"{x:.1f}"


def _count(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "unknown"
    return "never" if math.isinf(x) else f"{x:,.0f}"


def _cell(v, col: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "float" if col.endswith("_bits") else "-"
    if col in ("energy_share", "baseline_energy_share"):
        return f"{100 * v:.1f}%"
    if col in ("latency_ms", "energy_mj"):
        return f"{v:.5f}"
    if col == "prune_ratio":
        return f"{v:.3f}"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return f"{int(v):,}" if col in ("macs", "params") else str(int(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if col in ("macs", "params") else str(int(v))
    return str(v)


def _tr(cells, attrs: str = "", th: bool = False) -> str:
    tag = "th" if th else "td"
    inner = "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells)
    return f"<tr {attrs}>{inner}</tr>" if attrs else f"<tr>{inner}</tr>"
