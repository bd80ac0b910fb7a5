"""A run directory read back: its Pareto set and hypervolume, worked out by hand."""
import json

import pytest

from autocompress.search.rundir import RunDirectory

OBJECTIVES = {"energy_reduction": "max", "accuracy": "max"}


def _trial(n, status, energy_reduction, accuracy, duplicate_of=None):
    return {"trial": n, "status": status, "duplicate_of": duplicate_of, "params": {},
            "metrics": {"energy_reduction": energy_reduction, "accuracy": accuracy}}


@pytest.fixture
def run(tmp_path):
    rd = RunDirectory(tmp_path / "run")
    rd.create({"search": {"objectives": OBJECTIVES, "constraints": {"max_acc_drop": 2.0}}},
              {"accuracy": 0.90, "size_bytes": 100, "energy_mj": 1.0})
    for record in (_trial(0, "ok", 2.0, 0.890), _trial(1, "ok", 3.0, 0.885), _trial(2, "ok", 1.5, 0.880),
                   _trial(3, "infeasible", 5.0, 0.950), _trial(4, "ok", 3.0, 0.885, duplicate_of=1)):
        rd.append(record)
    return rd


def test_front_keeps_the_non_dominated_feasible_first_proposals_and_measures_their_area(run):
    front = run.front()
    # trial 2 is dominated by 0, 3 broke a constraint, 4 repeats 1's config
    assert list(front.pareto["trial"]) == [1, 0] and len(front.trials) == 5
    # no pareto.json: the reference is 1x and the baseline less the 2-point limit, 0.88;
    # area = [1,3] x [0.880,0.885] + [1,2] x [0.885,0.890] = 0.010 + 0.005
    assert front.reference_point == pytest.approx({"energy_reduction": 1.0, "accuracy": 0.88})
    assert front.hypervolume == pytest.approx(0.015)


def test_front_uses_the_reference_point_the_search_saved(run):
    (run.path / "pareto.json").write_text(json.dumps({"reference_point": {"energy_reduction": 1.0, "accuracy": 0.87}}))
    front = run.front()
    # [1,3] x [0.870,0.885] + [1,2] x [0.885,0.890] = 0.030 + 0.005
    assert front.hypervolume == pytest.approx(0.035)
