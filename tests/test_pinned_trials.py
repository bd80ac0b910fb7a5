"""The same seed gives the same trials, across refactors: every sampler's first proposals on the
shipped ``resnet_full`` space over a tiny ResNet, turned into configs and costed on tpu-v1, are
pinned in ``tests/data/pinned_trials.json``. That file was written by the code before operators
became plug-ins (commit 48f6357, ``python tests/test_pinned_trials.py``); a change that alters what
a seed proposes, how a proposal becomes a config or what the config costs fails here. The
accuracy told back is synthetic (no model is run), so the test takes a second."""
import json
from pathlib import Path

import numpy as np
import torch

PINNED = Path(__file__).parent / "data" / "pinned_trials.json"
ALGORITHMS = ["random", "nsga2", "tpe", "pymoo-nsga2", "surrogate"]
TRIALS = 8


def _make_sampler():
    try:
        from autocompress.search._algorithms import make_sampler
    except ImportError:  # the code before the sampler table had a module of its own
        from autocompress.search._sampler import make_sampler
    return make_sampler


def trials() -> dict:
    from autocompress.graph import trace
    from autocompress.hardware import CostModel, load_profile
    from autocompress.search._surrogate import SurrogateGuide
    from autocompress.space import load_space
    from autocompress.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10, stem="cifar", width_mult=0.125).eval()
    table = trace(model, torch.zeros(1, 3, 8, 8))
    profile = load_profile("tpu-v1")
    space = load_space("resnet_full").bind(table).restrict_to(profile)
    cm = CostModel(table, profile)
    reference = cm.cost(cm.reference()).energy_j

    def energy(values):
        return reference / cm.cost(space.config(values)).energy_j

    def accuracy(values):  # synthetic: pruning, low bits and low rank cost accuracy
        drop = 0.0
        for p in space.params:
            v = values.get(p.name, p.choices[0] if p.categorical else p.low)
            drop += {"prune": v, "wbits": (8 - v) / 40, "abits": (8 - v) / 40, "rank": (1 - v) / 4,
                     "width": 1 - v, "drop": v / 5}.get(p.knob, 0.0)
        return 0.9 - 0.01 * drop

    class Predictor:
        baseline = 0.9

        def predict_drop(self, values_list):
            return np.array([0.9 - accuracy(v) for v in values_list])

    guide = SurrogateGuide(Predictor(), lambda vs: np.array([energy(v) for v in vs]), 0.05)
    out = {}
    for algorithm in ALGORITHMS:
        sampler = _make_sampler()(algorithm, space.searchable, ["max", "max"], 0, TRIALS, n_constraints=1, guide=guide)
        rows = []
        while len(rows) < TRIALS:
            asked = sampler.ask()
            if asked is None:
                break
            handle, values = asked
            config = space.config(values)
            e, a = energy(values), accuracy(values)
            sampler.tell(handle, [e, a], [0.9 - a - 0.05])
            rows.append({"values": {k: round(float(v), 9) for k, v in sorted(values.items())},
                         "layers": json.loads(json.dumps(config.to_dict()["layers"])),
                         "energy_reduction": round(float(e), 9)})
        out[algorithm] = rows
    return out


def test_the_same_seed_gives_the_same_trials_as_before():
    pinned = json.loads(PINNED.read_text())
    now = trials()
    for algorithm in ALGORITHMS:
        assert len(now[algorithm]) == len(pinned[algorithm]) >= 4, algorithm
        for i, (a, b) in enumerate(zip(now[algorithm], pinned[algorithm])):
            assert a == b, f"{algorithm} trial {i}: {a} != {b}"


if __name__ == "__main__":
    PINNED.parent.mkdir(exist_ok=True)
    PINNED.write_text(json.dumps(trials(), indent=1) + "\n")
    print(f"wrote {PINNED}")
