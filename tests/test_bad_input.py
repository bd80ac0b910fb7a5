"""Bad profiles and spaces: every outcome is success or one clear line (no traceback, no hang)."""
import copy
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from autocompress import UserError
from autocompress.config import CompressionConfig
from autocompress.graph import trace
from autocompress.hardware import CostModel, load_profile
from autocompress.models import build_model
from autocompress.space import load_space

ROOT = Path(__file__).resolve().parents[1]
ODD_VALUES = [None, -1, 0, -3.5, 1e30, "", "abc", "24 MiB", "-4 GB/s", [], {}, [1, 2], {"a": 1}, True, "nan", float("nan")]


def _paths(obj, prefix=()):
    """Every (path) to a value inside nested dicts / lists."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(data, rng: random.Random):
    data = copy.deepcopy(data)
    paths = [p for p in _paths(data) if p]
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            op = rng.random()
            if op < 0.3 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif op < 0.4 and isinstance(parent, dict):
                parent["unexpected_" + str(path[-1])] = parent.pop(path[-1], 1)
            else:
                parent[path[-1]] = rng.choice(ODD_VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    return data


@pytest.fixture(scope="module")
def table():
    model, _ = build_model("resnet18", num_classes=10, input_shape=(3, 8, 8))
    return trace(model, torch.zeros(1, 3, 8, 8))


def _one_line(e: UserError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg


def test_mutated_profiles_load_or_fail_with_one_line_naming_the_file(tmp_path, table):
    base = yaml.safe_load((ROOT / "hw_profiles" / "tpu-v1.yaml").read_text())
    rng = random.Random(0)
    ok = failed = 0
    for i in range(150):
        path = tmp_path / f"p{i}.yaml"
        path.write_text(yaml.safe_dump(_mutate(base, rng)))
        try:
            profile = load_profile(str(path))
        except UserError as e:
            _one_line(e)
            assert f"p{i}.yaml" in str(e)
            failed += 1
            continue
        cost = CostModel(table, profile).cost(CompressionConfig().with_default_bits(table, 8, 8))
        assert cost.energy_j >= 0 and cost.latency_s > 0
        ok += 1
    assert failed > 50 and ok > 5  # the mutations exercise both outcomes


def test_mutated_spaces_bind_or_fail_with_one_line(tmp_path, table):
    base = yaml.safe_load((ROOT / "search_spaces" / "resnet.yaml").read_text())
    rng = random.Random(1)
    failed = 0
    for i in range(150):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(yaml.safe_dump(_mutate(base, rng)))
        try:
            bound = load_space(str(path)).bind(table)
            bound.config({p.name: (p.choices[-1] if p.categorical else p.high) for p in bound.params})
        except UserError as e:
            _one_line(e)
            failed += 1
    assert failed > 30


@pytest.mark.parametrize("text, expected", [
    ("name: x\n  bad: [", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_unreadable_yaml_is_named(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    for loader in (load_profile, load_space):
        with pytest.raises(UserError, match=expected) as info:
            loader(str(path))
        assert "broken.yaml" in str(info.value)


def test_profile_field_errors_name_the_field(tmp_path):
    base = yaml.safe_load((ROOT / "hw_profiles" / "tpu-v1.yaml").read_text())
    cases = {
        "memory.0.bandwidth_bytes_per_s": lambda d: d["memory"][0].update(bandwidth_bytes_per_s="-34 GB/s"),
        "clock_hz": lambda d: d.update(clock_hz="fast"),
        "precisions.0.weights": lambda d: d["precisions"][0].update(weights="int8"),
        "power": lambda d: d.pop("power"),
        "reference_precision": lambda d: d.update(reference_precision={"weights": 4, "activations": 4}),
    }
    for field, change in cases.items():
        data = copy.deepcopy(base)
        change(data)
        path = tmp_path / "mine.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(UserError) as info:
            load_profile(str(path))
        assert "mine.yaml" in str(info.value) and (field in str(info.value) or field.split(".")[0] in str(info.value))


def test_a_space_that_touches_no_layer_says_so(tmp_path, table):
    path = tmp_path / "none.yaml"
    path.write_text("name: none\nknobs:\n  - {knob: wbits, layers: ['decoder.*'], choices: [4, 8]}\n")
    with pytest.raises(UserError, match="touches no layer"):
        load_space(str(path)).bind(table)


def test_cli_with_a_mutated_profile_never_prints_a_traceback(tmp_path):
    base = yaml.safe_load((ROOT / "hw_profiles" / "tpu-v1.yaml").read_text())
    rng = random.Random(7)
    for i in range(4):
        path = tmp_path / f"cli{i}.yaml"
        path.write_text(yaml.safe_dump(_mutate(base, rng)))
        r = subprocess.run([sys.executable, "-m", "autocompress.cli", "profile", "--target", str(path),
                            "--input-shape", "3x32x32"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert "Traceback" not in r.stderr
        assert r.returncode in (0, 2)
        if r.returncode == 2:
            assert len(r.stderr.strip().splitlines()) == 1
