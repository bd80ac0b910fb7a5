"""How many configs per second the analytic cost model prices, against SCALE-Sim.

Random configs of the ResNet-18 search space (pruning and bits per layer) are resolved against
the LayerTable and costed on TPU v1, on one core. SCALE-Sim (compute model only, its fastest
mode) simulates the same 20 conv layers once, for the ratio. Writes
benchmarks/results/cost_model_speed.json.

    python benchmarks/cost_model_speed.py
"""
from __future__ import annotations

import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from autocompress.graph import trace  # noqa: E402
from autocompress.hardware import CostModel, load_profile  # noqa: E402
from autocompress.models import build_model  # noqa: E402
from autocompress.space import load_space  # noqa: E402


def main(n: int = 5000, input_px: int = 224) -> dict:
    model, _ = build_model("resnet18", num_classes=1000, input_shape=(3, input_px, input_px))
    table = trace(model, torch.zeros(1, 3, input_px, input_px))
    profile = load_profile("tpu-v1")
    cm = CostModel(table, profile)
    space = load_space("resnet").bind(table)
    rng = random.Random(0)
    configs = [space.config({p.name: rng.choice(p.choices) for p in space.params}).with_default_bits(table, 8, 8)
               for _ in range(n)]
    cm.cost(configs[0])  # build the resolve plan once
    # best of three passes: this VM's timings are noisy (steal time)
    single = batched = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for c in configs:
            cm.cost(c)
        single = min(single, (time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        cm.cost_many(configs)
        batched = min(batched, (time.perf_counter() - t0) / n)
    ours = batched

    result = {"configs": n, "model": f"resnet18 at {input_px}x{input_px}", "target": "tpu-v1",
              "seconds_per_config": ours, "configs_per_second": 1 / ours, "threads": 1,
              "configs_per_second_one_at_a_time": 1 / single,
              "note": "configs_per_second: CostModel.cost_many (vectorised); one_at_a_time: CostModel.cost",
              "cpu": platform.processor() or platform.machine()}
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_scalesim import scalesim_ws_cycles

        convs = [x for x in table.layers if x.kind == "conv"]
        topo = [(x.name, (x.out_shape[1] - 1) * x.stride[0] + x.kernel[0], (x.out_shape[2] - 1) * x.stride[0] + x.kernel[1],
                 x.kernel[0], x.kernel[1], x.in_channels, x.out_channels, x.stride[0]) for x in convs]
        t0 = time.perf_counter()
        scalesim_ws_cycles(topo)
        theirs = time.perf_counter() - t0
        result.update(scalesim_seconds_per_config=theirs, speedup_vs_scalesim=theirs / ours,
                      scalesim_note="SCALE-Sim 3.0 compute model only (no memory simulation), same 20 conv layers")
    except ImportError:
        result["scalesim_note"] = "scalesim not installed: pip install scalesim"
    out = Path(__file__).parent / "results" / "cost_model_speed.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
