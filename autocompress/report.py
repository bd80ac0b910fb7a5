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
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from autocompress._errors import NothingFeasible, UserError
from autocompress.carbon import (CarbonSettings, break_even_inferences, candidate_figures, carbon_settings,
                                 footprint_g)
from autocompress.search.rundir import RunDirectory, best_of, pareto_of
from autocompress.search_energy import load_search_energy
from autocompress.utils import atomic_write_bytes, atomic_write_text

__all__ = ["Report", "build_report", "CARBON_COLUMNS", "plural", "pareto_rich_table", "config_summary",
           "prune_notes"]

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
    def rich_table(self, wide: bool = False):
        """The Pareto set as a terminal table: eight columns that fit 100 columns; ``wide`` adds
        SQNR and the carbon figures (all of them are in report.html and pareto.csv)."""
        return pareto_rich_table(self.pareto, self.baseline, self.origin,
                                 f"Pareto set ({plural(len(self.pareto), 'candidate')}, hypervolume "
                                 f"{self.hypervolume:.4f})", wide=wide, pick=self.pick,
                                 baseline_figures=self.baseline_figures, carbon_label=self.carbon.label)

    def next_steps(self) -> list[tuple[str, str]]:
        """(what, command) for the chosen candidate: export, re-create, fine-tune."""
        if self.pick is None:
            return []
        run, n = _shell_path(self.run_dir), self.pick
        return [("export its config (YAML, re-applicable)",
                 f"autocompress export {run} --pick {n} --format yaml --out trial{n}.yaml"),
                ("export it as a QDQ ONNX model",
                 f"autocompress export {run} --pick {n} --format onnx --out trial{n}.onnx"),
                ("re-create it with the run's own data settings (reproduces its record) and save it",
                 f"autocompress apply --run {run} --pick {n} --out trial{n}.pt"),
                ("fine-tune it to its final accuracy and measure it on the test split",
                 f"autocompress finetune {run} --pick {n}")]

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
            atomic_write_bytes(self.run_dir / name, data)
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
        # the colour spans the feasible trials' sizes (the baseline's far larger size would squeeze them
        # into one colour); the baseline is the red star
        norm = _norm(pd.concat([ok["size_bytes"], self.pareto["size_bytes"]]) / 1e6 if len(ok) or len(self.pareto)
                     else pd.Series([self.baseline["size_bytes"] / 1e6]))
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
        panels = [("prune_ratio", "pruning ratio\n(channel group)"), ("bits", "bits (w / a)")]
        if "energy_mj" in lay:
            panels.append(("energy", "energy (mJ)"))
        if "rank" in lay:
            panels.insert(2, ("rank", "rank"))
        axes = fig.subplots(len(panels), 1, sharex=True)
        x = np.arange(len(lay))
        for ax, (col, label) in zip(axes, panels):
            if col == "bits":
                ax.bar(x - 0.2, lay["weight_bits"].fillna(32), 0.4, label="weights")
                ax.bar(x + 0.2, lay["activation_bits"].fillna(32), 0.4, label="activations")
                ax.legend(fontsize=7)
            elif col == "energy":  # the energy itself: a share can grow while the energy falls
                ax.bar(x - 0.2, lay["baseline_energy_mj"], 0.4, color="0.6", label="uncompressed")
                ax.bar(x + 0.2, lay["energy_mj"], 0.4, color="tab:green", label=f"trial {self.pick}")
                ax.legend(fontsize=7)
            else:
                ax.bar(x, lay[col].fillna(0), color="tab:purple")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3, axis="y")
        axes[-1].set_xticks(x, lay["layer"], rotation=90, fontsize=6)
        axes[0].set_title(f"Per layer: trial {self.pick} ({self.origin} energy)")

    # -- HTML --------------------------------------------------------------------------------------
    def pareto_svg(self) -> str:
        """Every evaluated trial as a point of energy reduction against accuracy, with a tooltip."""
        t = self.trials
        if not len(t) or "energy_reduction" not in t:
            return ""
        done = t[t["energy_reduction"].notna() & t["accuracy"].notna() & t["duplicate_of"].isna()]
        on_front = {int(x) for x in self.pareto["trial"]} if len(self.pareto) else set()
        configs = {int(r["trial"]): r.get("config") for r in self.records}
        points = []
        for _, r in done.iterrows():
            trial = int(r["trial"])
            status = "Pareto set" if trial in on_front else ("feasible" if r["status"] == "ok" else "infeasible")
            title = (f"trial {trial} ({status}{', chosen' if trial == self.pick else ''})\n"
                     f"accuracy {100 * r['accuracy']:.2f}% (drop {r['accuracy_drop']:.2f} pp)\n"
                     f"energy reduction {r['energy_reduction']:.2f}x, {r['size_bytes'] / 1e6:.2f} MB modeled packed size\n"
                     f"config: {config_summary(configs.get(trial))}")
            points.append({"trial": trial, "x": float(r["energy_reduction"]), "y": 100 * float(r["accuracy"]),
                           "pareto": trial in on_front, "feasible": r["status"] == "ok", "chosen": trial == self.pick,
                           "title": title})
        if not points:
            return ""
        b = self.baseline
        base = {"y": 100 * b["accuracy"], "title": f"uncompressed baseline: accuracy {100 * b['accuracy']:.2f}%, "
                                                   f"{b['size_bytes'] / 1e6:.2f} MB, energy reduction 1.00x"}
        drop = (self.settings.get("search", {}).get("constraints") or {}).get("max_acc_drop")
        floor = 100 * b["accuracy"] - drop if drop is not None else None
        return _pareto_svg(points, base, f"energy reduction vs uncompressed (x, {self.origin})",
                           f"{self.settings.get('metric', 'top1')} accuracy (%)", floor)

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
            lay = self.layers
            cols = [(c, label) for c, label in _layer_columns() if c in lay and (c != "prune_note" or lay[c].any())]
            lrows = "".join(_tr([_layer_cell(r, c) for c, _ in cols]) for _, r in lay.iterrows())
            layers_html = (f'{img("layers.png", f"Per-layer view of trial {self.pick}")}'
                           f'<div class="scroll"><table id="layer-table"><thead>{_tr([label for _, label in cols], th=True)}'
                           f'</thead><tbody>{lrows}</tbody></table></div>')
        else:
            layers_html = ""
        steps = self.next_steps()
        next_html = ("<ol>" + "".join(f"<li>{e(what)}:<pre>{e(cmd)}</pre></li>" for what, cmd in steps) + "</ol>"
                     if steps else "<p>No feasible candidate yet: loosen a constraint or raise the trial budget, "
                                   "then resume the search (autocompress search --resume RUN_DIR).</p>")
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
.scroll {{ overflow-x: auto; max-width: 100%; }} #layer-table {{ font-size: 12px; }}
#layer-table th {{ white-space: normal; max-width: 7em; vertical-align: bottom; }}
#pareto-svg {{ max-width: 100%; height: auto; }} #pareto-svg circle.trial:hover {{ stroke: #000; stroke-width: 2; }}
pre {{ background: #f6f6f6; padding: 4px 8px; overflow-x: auto; }}
</style></head><body>
<h1>{e(title)}</h1>
<section id="summary">{summary}</section>
<h2>Pareto front</h2>
<p>Hover a point to see its trial, figures and config. Dark blue: the Pareto set; light blue: other feasible
trials; grey: infeasible; red ring: the chosen candidate; red star: the uncompressed model.</p>
{self.pareto_svg()}
<div class="scroll">{pareto_html}</div>
{img("pareto.png", "Energy reduction vs accuracy (for papers); colour: model size of the feasible trials; star: uncompressed baseline")}
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
<h2 id="next-steps">Next steps for trial {e(str(self.pick))}</h2>
{next_html}
<p>Run directory: {e(str(self.run_dir))}</p>
</body></html>
"""


# ------------------------------------------------------------------------------------------------
def build_report(run_dir: str | Path, *, pick: int | None = None, carbon: CarbonSettings | None = None,
                 max_acc_drop: float | None = None) -> Report:
    """Everything the report shows, from the run directory alone."""
    rd = RunDirectory.existing(run_dir)
    settings, baseline = rd.settings, rd.baseline
    carbon = carbon or carbon_settings(stored=settings.get("carbon"))
    front = rd.front()
    records, frame, pareto, hv = front.records, front.trials, front.pareto, front.hypervolume
    objectives, ref = front.objectives, front.reference_point
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
        best = best_of(pareto, max_acc_drop)
        if best is not None:
            pick = int(best["trial"])
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


def _layers_of(rd: RunDirectory, settings: dict):
    """(LayerTable, profile) from layers.json, or, for a run that predates it, traced again from
    the model's architecture (weights are not needed for shapes)."""
    saved = rd.layers()
    if saved is not None:
        return saved, "from layers.json"
    inp = settings.get("inputs", {})
    if str(inp.get("model", "")).endswith("(user model)"):
        raise UserError("this run has no layers.json and its model was a Python object")
    import torch

    from autocompress.graph import trace
    from autocompress.hardware import load_target
    from autocompress.models import build_model

    shape = tuple(inp["input_shape"])
    net, _ = build_model(inp["model"], num_classes=inp.get("num_classes") or 1000, input_shape=shape,
                         stem=inp.get("stem"))
    table = trace(net, torch.zeros((1, *shape)))
    return (table, load_target(inp.get("target_spec") or inp["target"])), \
        "traced again from the model (this run has no layers.json)"


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
    notes = prune_notes(table, config)
    frame["prune_note"] = [notes.get(name, "") for name in frame["layer"]]
    for column in ("rank", "dropped"):  # low rank and depth are optional: show them only when used
        if not frame[column].any():
            frame = frame.drop(columns=column)
    if not profile.layerwise:  # it times whole models: no per-layer model to split its figures
        return frame, (f"Layer table {how}. {profile.name} measures whole models, so there is no per-layer "
                       f"latency or energy. {_GROUP_SENTENCE}")
    cm = CostModel(table, profile)
    cost = cm.cost(config, detail=True)
    base = cm.cost(cm.reference(), detail=True)
    frame["latency_ms"] = cost.layers["latency_ms"]
    frame["energy_mj"] = cost.layers["energy_mj"]
    frame["energy_share"] = cost.layers["energy_mj"] / cost.layers["energy_mj"].sum()
    frame["baseline_energy_mj"] = base.layers["energy_mj"]
    frame["baseline_energy_share"] = base.layers["energy_mj"] / base.layers["energy_mj"].sum()
    note = (f"Layer table {how}; energy and latency per layer {cost.origin} (total {cost.energy_j * 1e3:.5f} mJ, "
            f"recorded for the trial: {(record.get('metrics') or {}).get('energy_mj', float('nan')):.5f} mJ). "
            f"Energy share: the layer's part of the candidate's energy (and of the uncompressed model's). "
            f"{_GROUP_SENTENCE}")
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


_GROUP_SENTENCE = ("Pruning ratio: of the layer's output channels, which belong to a channel group; layers "
                   "joined by a residual add, a concatenation or a depthwise link share one group and are pruned "
                   "together, so a layer's ratio can differ from the prune value its own entry in the config has "
                   "(the note says which layer set it).")

_LAYER_COLUMNS = [("layer", "layer"), ("kind", "kind"), ("prune_ratio", "pruning ratio (channel group)"),
                  ("out_channels", "channels kept / of"), ("weight_bits", "weight bits"),
                  ("activation_bits", "activation bits"), ("rank", "rank"), ("dropped", "dropped"),
                  ("macs", "MACs"), ("params", "params"), ("latency_ms", "latency ms"), ("energy_mj", "energy mJ"),
                  ("energy_share", "energy share"), ("baseline_energy_share", "uncompressed energy share"),
                  ("prune_note", "pruning note")]


def _layer_columns() -> list[tuple[str, str]]:
    """The per-layer table's columns: the built-in ones, with each plug-in operator's before "dropped"."""
    from autocompress import operators

    cols = list(_LAYER_COLUMNS)
    at = cols.index(("dropped", "dropped"))
    return cols[:at] + [op.column for op in operators.plugins() if op.column] + cols[at:]


def _layer_cell(r, col: str) -> str:
    if col == "out_channels":
        return f"{int(r['out_channels'])} / {int(r['original_out_channels'])}"
    return _cell(r[col], col)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 candidate``, ``2 candidates``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def prune_notes(table, config) -> dict[str, str]:
    """Layer -> a note where the ratio its output channels are pruned by differs from its own
    ``prune`` in the config: its channel group was set by another layer, or by the width."""
    from autocompress.config import effective_ratios, group_ratios

    try:
        ratios, effective = group_ratios(table, config), effective_ratios(table, config)
    except Exception:  # noqa: BLE001 - a config that does not apply has no notes to add
        return {}
    setters: dict[str, str] = {}
    for name, lc in config.layers.items():
        if lc.prune > 0 and name in table:
            for g in table[name].out_groups:
                setters.setdefault(g, name)
    notes = {}
    for layer in table.layers:
        if len(layer.out_groups) != 1:
            continue
        group = layer.out_groups[0]
        own = config.layers[layer.name].prune if layer.name in config.layers else 0.0
        shared = effective.get(group, ratios.get(group, 0.0))
        if abs(shared - own) < 1e-12:
            continue
        setter = setters.get(group)
        if setter and setter != layer.name:
            notes[layer.name] = (f"own prune {own:g}; pruned {shared:.3g} with its channel group "
                                 f"(set by {setter})")
        elif config.arch.width < 1.0:
            notes[layer.name] = f"own prune {own:g}; pruned {shared:.3g} with the width multiplier {config.arch.width:g}"
        else:
            notes[layer.name] = f"own prune {own:g}; pruned {shared:.3g} with its channel group"
    return notes


def config_summary(config: dict | None) -> str:
    """One line on what a config does: how many layers are pruned and by how much, the bits,
    ranks, width and dropped blocks."""
    if not config:
        return "no config"
    layers = config.get("layers") or {}
    parts = []
    pruned = [lc.get("prune") or 0.0 for lc in layers.values() if (lc.get("prune") or 0.0) > 0]
    if pruned:
        parts.append(f"{plural(len(pruned), 'layer')} pruned {min(pruned):g}-{max(pruned):g}"
                     if len(set(pruned)) > 1 else f"{plural(len(pruned), 'layer')} pruned {pruned[0]:g}")
    for key, label in (("wbits", "weights"), ("abits", "activations")):
        bits = sorted({lc.get(key) for lc in layers.values() if lc.get(key) is not None})
        if bits:
            parts.append(f"{label} {'/'.join(map(str, bits))}-bit")
    ranks = [lc.get("rank") for lc in layers.values() if lc.get("rank") is not None]
    if ranks:
        parts.append(f"{plural(len(ranks), 'layer')} low-rank")
    from autocompress import operators

    for op in operators.plugins():  # e.g. "3 layers sparsity 2:4"
        cells = [op.cell(lc[op.knob]) for lc in layers.values() if lc.get(op.knob) not in (None, op.default)]
        if cells and op.column:
            parts.append(f"{plural(len(cells), 'layer')} {op.column[1]} {'/'.join(sorted(set(map(str, cells))))}")
    arch = config.get("arch") or {}
    if (arch.get("width") or 1.0) < 1.0:
        parts.append(f"width x{arch['width']:g}")
    if arch.get("drop"):
        parts.append(f"drops {', '.join(arch['drop'])}")
    return "; ".join(parts) or "uncompressed"


def pareto_rich_table(pareto: pd.DataFrame, baseline: dict, origin: str, title: str, *, wide: bool = False,
                      pick: int | None = None, baseline_figures: dict | None = None,
                      carbon_label: str | None = None):
    """The Pareto set for the terminal. Default: trial, accuracy, drop, size, energy reduction,
    energy, latency and (with carbon figures) break-even: under 100 columns, nothing cut.
    ``wide`` adds SQNR and the carbon figures. Where a figure comes from is the caption."""
    from rich.table import Table

    carbon = baseline_figures is not None and "break_even_inferences" in pareto
    t = Table(title=title, title_justify="left", caption_justify="left",
              caption=f"energy and latency per inference: {origin}" + (f"; carbon at {carbon_label}" if carbon and wide else ""))
    cols = ["trial", "accuracy\n%", "drop\npp", "size\nMB", "energy\nreduction", "energy\nmJ", "latency\nms"]
    if carbon:
        cols.append("break-even\ninferences")
    if wide:
        cols.append("SQNR\ndB")
        if carbon:
            cols += ["kWh per\nM inf", "kgCO2e per\nM inf", "GOPS/W"]
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)

    def row(r, base: bool):
        cells = ["base" if base else str(int(r["trial"])), f"{100 * r['accuracy']:.2f}",
                 "0.00" if base else f"{r['accuracy_drop']:.2f}", f"{r['size_bytes'] / 1e6:.2f}",
                 "1.00x" if base else f"{r['energy_reduction']:.2f}x", _fixed(r["energy_mj"], baseline["energy_mj"]),
                 _fixed(r["latency_ms"], baseline["latency_ms"])]
        fig = baseline_figures if base else r
        if carbon:
            cells.append("-" if base else _count(r["break_even_inferences"]))
        if wide:
            cells.append("-" if base else _sqnr(r["sqnr_db"]))
            if carbon:
                cells += [f"{fig['kwh_per_million']:.4g}", f"{fig['gco2e_per_million'] / 1e3:.4g}",
                          f"{fig['gops_per_w']:.1f}"]
        return cells

    t.add_row(*row(baseline, True), style="dim")
    for _, r in pareto.iterrows():
        t.add_row(*row(r, False), style="bold" if pick is not None and int(r["trial"]) == pick else None)
    return t


def _fixed(x, ref) -> str:
    """``x`` with the decimals that give the baseline ``ref`` four significant digits (one column
    lines up, and a candidate's smaller figure keeps as many decimals)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    try:
        digits = 3 - math.floor(math.log10(abs(float(ref))))
    except (TypeError, ValueError):
        return f"{x:.4g}"
    return f"{x:.{min(6, max(0, digits))}f}"


def _shell_path(path) -> str:
    import shlex

    return shlex.quote(str(path))


def _pareto_svg(points: list[dict], baseline: dict, x_label: str, y_label: str, floor: float | None) -> str:
    """The Pareto front as inline SVG: every trial a point; hovering one shows its trial, figures
    and config (an SVG <title>, so no script and no library is needed)."""
    e = html.escape
    W, H, L, R, T, B = 760, 420, 64, 16, 16, 48
    xs = [p["x"] for p in points] + [1.0]
    ys = [p["y"] for p in points] + [baseline["y"]] + ([floor] if floor is not None else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad_x, pad_y = (x1 - x0) * 0.05 or 0.5, (y1 - y0) * 0.08 or 0.5
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y

    def sx(v):
        return L + (v - x0) / (x1 - x0) * (W - L - R)

    def sy(v):
        return T + (y1 - v) / (y1 - y0) * (H - T - B)

    out = [f'<svg id="pareto-svg" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'role="img" aria-label="{e(y_label)} against {e(x_label)}">',
           f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="#fff" stroke="#999"/>']
    for i in range(6):  # grid and tick labels
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        out.append(f'<line x1="{sx(xv):.1f}" y1="{T}" x2="{sx(xv):.1f}" y2="{H - B}" stroke="#eee"/>'
                   f'<text x="{sx(xv):.1f}" y="{H - B + 14}" font-size="11" text-anchor="middle">{xv:.3g}</text>'
                   f'<line x1="{L}" y1="{sy(yv):.1f}" x2="{W - R}" y2="{sy(yv):.1f}" stroke="#eee"/>'
                   f'<text x="{L - 4}" y="{sy(yv) + 4:.1f}" font-size="11" text-anchor="end">{yv:.3g}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" font-size="12" text-anchor="middle">{e(x_label)}</text>'
               f'<text x="14" y="{(T + H - B) / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {(T + H - B) / 2})">{e(y_label)}</text>')
    if floor is not None and y0 <= floor <= y1:
        out.append(f'<line x1="{L}" y1="{sy(floor):.1f}" x2="{W - R}" y2="{sy(floor):.1f}" stroke="#d62728" '
                   f'stroke-dasharray="5,4"><title>accuracy floor: {floor:.2f}</title></line>')
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["x"])
    if len(front) > 1:
        path = " ".join(f"{sx(p['x']):.1f},{sy(p['y']):.1f}" for p in front)
        out.append(f'<polyline points="{path}" fill="none" stroke="#333" stroke-width="1" opacity="0.6"/>')
    for p in sorted(points, key=lambda p: (p["pareto"], p["chosen"])):  # the front on top
        fill = "#1f77b4" if p["pareto"] else ("#9ecae1" if p["feasible"] else "#bbb")
        r = 7 if p["pareto"] else 4.5
        stroke = ' stroke="#d62728" stroke-width="3"' if p["chosen"] else (' stroke="#000"' if p["pareto"] else "")
        out.append(f'<circle class="trial" data-trial="{p["trial"]}" cx="{sx(p["x"]):.1f}" cy="{sy(p["y"]):.1f}" '
                   f'r="{r}" fill="{fill}"{stroke}><title>{e(p["title"])}</title></circle>')
    bx, by = sx(1.0), sy(baseline["y"])
    out.append(f'<path d="M{bx:.1f},{by - 9:.1f} L{bx + 3:.1f},{by - 3:.1f} L{bx + 9:.1f},{by - 3:.1f} '
               f'L{bx + 4:.1f},{by + 2:.1f} L{bx + 6:.1f},{by + 9:.1f} L{bx:.1f},{by + 5:.1f} L{bx - 6:.1f},{by + 9:.1f} '
               f'L{bx - 4:.1f},{by + 2:.1f} L{bx - 9:.1f},{by - 3:.1f} L{bx - 3:.1f},{by - 3:.1f} Z" fill="#d62728" '
               f'stroke="#000"><title>{e(baseline["title"])}</title></path>')
    out.append("</svg>")
    return "".join(out)


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
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
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
