"""Reliability II (issue #17): corrupt data, hostile profiles and files, unknown layers, a run
directory that stops taking writes, a killed search's Ray processes, flat per-trial bookkeeping,
and a fuzz of trials.jsonl. Tiny inputs; seconds each."""
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.waiting import wait_until

from autocompress import UserError
from autocompress.search.rundir import RunDirectory, pareto_of, trials_frame

ROOT = Path(__file__).resolve().parents[1]


# --- item 4: corrupt images, empty classes ------------------------------------------------------
def _image_folder(root: Path, per_class: int = 4, classes=("cat", "dog")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])  # a truncated file: the header reads, the data does not


def test_one_corrupt_image_is_skipped_counted_and_named(tmp_path):
    from autocompress.data._imagefolder import load_imagefolder

    root = _image_folder(tmp_path / "d", per_class=60)
    bad = root / "train" / "cat" / "3.png"
    _corrupt(bad)
    bundle = load_imagefolder(str(root))
    assert len(bundle.train_y) == 119 and len(bundle.val_y) == 120
    note = next(n for n in bundle.notes if "unreadable" in n)
    assert "skipped 1 unreadable image" in note and str(bad) in note
    again = load_imagefolder(str(root))  # read from the cache: still said
    assert any(str(bad) in n for n in again.notes)


def test_many_unreadable_images_are_an_error_naming_the_first(tmp_path):
    from autocompress.data._imagefolder import load_imagefolder

    root = _image_folder(tmp_path / "d", per_class=4)
    for i in range(2):
        _corrupt(root / "train" / "dog" / f"{i}.png")
    (root / "train" / "dog" / "x.jpg").write_text("not an image")
    with pytest.raises(UserError, match=r"3 of the 9 images in .*train cannot be read .*0\.png"):
        load_imagefolder(str(root))


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    from autocompress.data._imagefolder import load_imagefolder

    root = _image_folder(tmp_path / "d", per_class=2)
    (root / "train" / "zebra").mkdir()
    with pytest.raises(UserError, match=r"class folder .*train/zebra holds no images"):
        load_imagefolder(str(root))


def test_a_class_whose_only_image_is_unreadable_is_an_error(tmp_path):
    from autocompress.data._imagefolder import load_imagefolder

    root = _image_folder(tmp_path / "d", per_class=1)
    _corrupt(root / "test" / "dog" / "0.png")
    with pytest.raises(UserError, match=r"test/dog holds no readable image"):
        load_imagefolder(str(root))


# --- item 5: finite, positive figures in profiles -----------------------------------------------
def _profile_file(tmp_path, edit, base="tpu-v1") -> Path:
    data = yaml.safe_load((ROOT / "hw_profiles" / f"{base}.yaml").read_text())
    edit(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(clock_hz=float("inf")), "clock_hz"),
    (lambda d: d.update(clock_hz="1e999 Hz"), "clock_hz"),
    (lambda d: d.update(peak_macs_per_cycle=float("inf")), "peak_macs_per_cycle"),
    (lambda d: d["memory"][0].update(energy_pj_per_byte=float("inf")), "memory.0.energy_pj_per_byte"),
    (lambda d: d["memory"][1].update(bandwidth_bytes_per_s=float("nan")), "memory.1.bandwidth_bytes_per_s"),
    (lambda d: d["power"].update(busy_w=float("inf")), "power.busy_w"),
])
def test_infinite_or_nan_figures_are_refused_naming_the_field(tmp_path, edit, field):
    from autocompress.hardware import load_profile

    with pytest.raises(UserError) as e:
        load_profile(_profile_file(tmp_path, edit))
    msg = str(e.value)
    assert "\n" not in msg and f"field {field!r}" in msg and "finite" in msg


def test_zero_compute_energy_is_refused(tmp_path):
    from autocompress.hardware import load_profile

    with pytest.raises(UserError, match="power.busy_w is 0"):
        load_profile(_profile_file(tmp_path, lambda d: d["power"].update(idle_w=0, busy_w=0)))

    def zero_macs(d):
        for p in d["precisions"]:
            p["energy_per_mac_pj"] = 0.0
    with pytest.raises(UserError, match="energy_per_mac_pj is 0"):
        load_profile(_profile_file(tmp_path, zero_macs, base="bitfusion"))


def test_every_shipped_profile_still_loads():
    from autocompress.hardware import load_profile
    from autocompress.hardware.profile import list_profiles

    for name in list_profiles():
        load_profile(name)
    load_profile(ROOT / "examples" / "my_accelerator.yaml")


# --- item 6: a size cap on YAML / JSON input ----------------------------------------------------
def _big(path: Path) -> Path:
    from autocompress.utils import MAX_INPUT_BYTES

    with open(path, "w") as f:
        f.write("name: big\nnotes:\n")
        line = "  - " + "x" * 1000 + "\n"
        for _ in range(MAX_INPUT_BYTES // len(line) + 2):
            f.write(line)
    return path


def test_oversized_profiles_spaces_and_configs_are_refused_before_parsing(tmp_path, monkeypatch):
    from autocompress.config import CompressionConfig
    from autocompress.hardware import load_profile
    from autocompress.space import load_space

    def parsed(*a, **k):
        raise AssertionError("an oversized file reached the YAML parser")

    monkeypatch.setattr(yaml, "safe_load", parsed)
    path = _big(tmp_path / "big.yaml")
    for load in (load_profile, load_space, CompressionConfig.load):
        with pytest.raises(UserError, match="larger than the 10 MiB limit"):
            load(str(path))


def test_a_yaml_alias_bomb_is_refused(tmp_path):
    from autocompress.hardware import load_profile

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 15) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="YAML aliases"):
        load_profile(path)


# --- item 7: a config naming a layer the model lacks --------------------------------------------
def test_a_config_naming_an_unknown_layer_is_an_error_naming_the_nearest(tmp_path):
    import autocompress
    from autocompress.config import CompressionConfig, LayerConfig
    from tests.tiny_models import tiny_resnet

    path = tmp_path / "c.yaml"
    CompressionConfig(layers={"layer1.0.conv3": LayerConfig(wbits=4)}).save(path)
    with pytest.raises(UserError, match=r"'layer1\.0\.conv3', which the model does not have \(nearest: layer1\.0\.conv2, "):
        autocompress.compress(tiny_resnet(), path, input_shape=(3, 8, 8))


# --- item 3 (mid-run): the run directory stops taking writes ------------------------------------
class _FakeSampler:
    def tell(self, *a):
        pass


class _FakeProblem:
    from autocompress.search.problem import Problem

    objectives = {"energy_reduction": "max", "accuracy": "max"}
    maximised = Problem.maximised  # the real points of the front

    def objective_values(self, r):
        return None

    def constraint_values(self, r):
        return None


def _ok(trial, e, a, **extra):
    return {"trial": trial, "params": {"p": trial}, "status": "ok", "seconds": 0.1,
            "metrics": {"energy_reduction": e, "accuracy": a, "fidelity": "screen", **extra}, **extra}


def test_an_unwritable_run_directory_mid_run_stops_the_search_and_keeps_the_rest():
    from autocompress.search._tune import SamplerSearcher

    written = []

    def on_record(r):
        if len(written) == 2:
            raise PermissionError(13, "Permission denied", "/x/run/trials.jsonl")
        written.append(r)

    s = SamplerSearcher(_FakeSampler(), _FakeProblem(), 0, on_record)
    for i in range(4):
        s.pending[f"t{i}"] = (None, i, {"p": i})
        s.on_trial_complete(f"t{i}", {"payload": json.dumps(_ok(i, 1.0 + i, 0.9))})
    assert [r["trial"] for r in written] == [0, 1]
    assert s.stop.is_set() and s.failure.filename == "/x/run/trials.jsonl"
    assert s.suggest("t9") == "FINISHED"  # no new trial is proposed


def test_the_front_sent_to_trials_is_the_non_dominated_set_kept_as_trials_end():
    from autocompress.search._tune import SamplerSearcher

    rng = random.Random(1)
    s = SamplerSearcher(_FakeSampler(), _FakeProblem(), 0, lambda r: None)
    points = []
    for i in range(200):
        e, a = rng.random() * 10, rng.random()
        points.append((e, a))
        s.pending[f"t{i}"] = (None, i, {"p": i})
        s.on_trial_complete(f"t{i}", {"payload": json.dumps(_ok(i, e, a))})
    expected = {p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)}
    assert set(s.front) == expected and len(s.front) < 20


# --- item 10: a SIGKILLed search leaves no Ray process behind -----------------------------------
_DRIVER = """
import logging, os, time
from autocompress.search import _tune
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
         configure_logging=True)
reaper = _tune._start_reaper()
@ray.remote
def f():
    return os.getpid()
ray.get(f.remote())
print(ray._private.worker._global_node.get_session_dir_path(), flush=True)
time.sleep(300)
"""


def _holding(session: str) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if any(session in a for a in p.cmdline()) or any(f.path.startswith(session) for f in p.open_files()):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
        except (psutil.Error, OSError):
            pass
    return out


@pytest.mark.slow
@pytest.mark.own_ray
def test_a_killed_search_leaves_no_ray_process_of_its_own():
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    session = proc.stdout.readline().strip()
    assert session.startswith("/"), "the driver did not start Ray"
    assert _holding(session)  # Ray's processes run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the reaper polls its parent; on a loaded machine it may take a while, so wait on the
    # processes themselves (a hang fails after tests.waiting.HUNG_S)
    wait_until(lambda: not _holding(session))
    assert not _holding(session), "Ray processes of the killed search are still running"


def test_run_trials_starts_the_reaper_for_a_local_ray():
    import inspect

    from autocompress.search import _tune

    assert "_start_reaper()" in inspect.getsource(_tune.run_trials)


# --- scale: incremental tables agree with a full rebuild ----------------------------------------
OBJ = {"energy_reduction": "max", "accuracy": "max"}
REF = {"energy_reduction": 1.0, "accuracy": 0.5}


def _random_records(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.1:
            out.append({"trial": i, "params": {"p": i}, "status": "failed", "error": "boom"})
        elif kind < 0.2:
            out.append({**_ok(i, 1 + rng.random() * 5, 0.6 + 0.4 * rng.random()), "status": "infeasible"})
        elif kind < 0.3 and i:
            out.append({**_ok(i, 2.0, 0.8), "duplicate_of": 0})
        else:
            r = _ok(i, round(1 + rng.random() * 5, 2), round(0.6 + 0.4 * rng.random(), 2))
            r["config"] = {"layers": {"x": {"wbits": i % 8 + 1}}}
            out.append(r)
    rng.shuffle(out)  # trials end out of order with several workers
    return out


def test_tables_kept_per_trial_agree_with_a_rebuild_from_trials_jsonl(tmp_path):
    records = _random_records(300)
    inc = RunDirectory(tmp_path / "inc")
    inc.path.mkdir()
    inc.write_tables([], OBJ, REF)
    for r in records:
        inc.append(r)
        inc.add_to_tables(r)
    full = RunDirectory(tmp_path / "full")
    full.path.mkdir()
    full.write_tables(records, OBJ, REF)
    a, b = (json.loads((d.path / "pareto.json").read_text()) for d in (inc, full))
    assert a == b and a["candidates"]
    for name in ("pareto.csv",):
        assert (inc.path / name).read_text() == (full.path / name).read_text()
    import pandas as pd

    rows = pd.read_csv(inc.path / "trials.csv").sort_values("trial").reset_index(drop=True)
    want = pd.read_csv(full.path / "trials.csv")
    pd.testing.assert_frame_equal(rows, want, check_dtype=False)
    # and the rule holds: a rebuild from trials.jsonl gives the full tables
    inc.write_tables(inc.trials(), OBJ, REF)
    assert (inc.path / "trials.csv").read_text() == (full.path / "trials.csv").read_text()


def test_adding_a_trial_costs_the_same_at_trial_2000_as_at_trial_20(tmp_path):
    import timeit

    rd = RunDirectory(tmp_path / "r")
    rd.path.mkdir()
    records = _random_records(2000, seed=3)
    rd.write_tables(records[:20], OBJ, REF)
    dominated = _ok(9999, 1.01, 0.601)  # the usual late trial: it does not enter the Pareto set
    early = min(timeit.repeat(lambda: rd.add_to_tables(dominated), number=5, repeat=3))
    rd.write_tables(records, OBJ, REF)
    late = min(timeit.repeat(lambda: rd.add_to_tables(dominated), number=5, repeat=3))
    assert late < 3 * early + 0.01


# --- fuzz: truncations and byte flips of trials.jsonl, then resume ------------------------------
def _resume(rd: RunDirectory, budget: int) -> list[dict]:
    """What a resumed search does with the run directory: set damaged lines aside, read the
    trials, run the rest under new indices."""
    rd.set_aside_torn_line()
    done = rd.trials()
    first = max((r["trial"] for r in done), default=-1) + 1
    for i in range(budget - len(done)):
        rd.append({"trial": first + i, "params": {"p": -1}, "status": "ok", "metrics": {}})
    return rd.trials()


def test_fuzz_truncations_and_byte_flips_lose_no_intact_trial_and_duplicate_none(tmp_path):
    rng = random.Random(0)
    budget = 12
    for case in range(150):
        rd = RunDirectory(tmp_path / f"r{case}")
        rd.path.mkdir()
        for r in _random_records(8, seed=case):
            rd.append(r)
        orig = (rd.path / "trials.jsonl").read_bytes()
        data = bytearray(orig)
        lines = orig.split(b"\n")[:-1]
        touched = set()
        if rng.random() < 0.5:  # a kill mid-write: a truncated tail (that line and all after it)
            cut = rng.randrange(1, len(data))
            touched |= set(range(orig[:cut].count(b"\n"), len(lines)))
            del data[cut:]
        for _ in range(rng.randint(0, 3)):  # damaged bytes (positions are those of the original)
            if not data:
                break
            pos = rng.randrange(len(data))
            line = orig[:pos].count(b"\n")
            touched |= {line, line + 1} if orig[pos] == ord("\n") else {line}
            data[pos] = (data[pos] + rng.randrange(1, 256)) % 256
        (rd.path / "trials.jsonl").write_bytes(bytes(data))
        intact = [json.loads(line) for i, line in enumerate(lines) if i not in touched]
        intact = [{k: v for k, v in r.items() if k != "crc32"} for r in intact]
        after = _resume(rd, budget)
        indices = [r["trial"] for r in after]
        assert len(indices) == len(set(indices)) == budget, (case, indices)
        kept = {r["trial"]: json.dumps(r, sort_keys=True) for r in after}
        for r in intact:  # every untouched trial survives unchanged
            assert kept.get(r["trial"]) == json.dumps(r, sort_keys=True), (case, r["trial"])
        assert _resume(rd, budget) == after  # a second resume changes nothing
        assert not (rd.path / "trials.jsonl").read_bytes() or (rd.path / "trials.jsonl").read_bytes().endswith(b"\n")


def test_a_record_from_an_older_run_without_a_checksum_still_reads(tmp_path):
    rd = RunDirectory(tmp_path)
    (tmp_path / "trials.jsonl").write_text('{"trial": 0, "status": "ok"}\n{"trial": 0, "status": "ok"}\n')
    assert rd.trials() == [{"trial": 0, "status": "ok"}]  # the repeated index counts once
    assert "1 damaged or repeated line" in rd.set_aside_torn_line()
    assert (tmp_path / "trials.jsonl.torn").read_text() == '{"trial": 0, "status": "ok"}\n'


def test_pareto_of_the_front_plus_one_is_the_pareto_of_all():
    """The identity the per-trial Pareto update rests on."""
    records = [r for r in _random_records(200, seed=5) if r["status"] == "ok" and not r.get("duplicate_of")]
    frame = trials_frame(records)
    for k in (50, 120, len(records)):
        part = trials_frame(records[:k])
        front = set(pareto_of(part, OBJ, REF)[0]["trial"])
        sub = [r for r in records[:k] if r["trial"] in front]
        if k < len(records):
            sub.append(records[k])
            full = set(pareto_of(trials_frame(records[:k + 1]), OBJ, REF)[0]["trial"])
            assert set(pareto_of(trials_frame(sub), OBJ, REF)[0]["trial"]) == full
    assert len(frame) == len(records)


def test_a_space_with_an_infinite_step_or_range_is_refused(tmp_path):
    from autocompress.space import SearchSpace

    for knob in ("{knob: prune, range: [0.0, .inf], step: 0.1}", "{knob: prune, range: [0.0, 0.5], step: .inf}",
                 "{knob: wbits, choices: [4, .nan]}"):
        with pytest.raises(Exception, match="finite"):
            SearchSpace.model_validate(__import__("yaml").safe_load(f"name: s\nknobs:\n  - {knob}\n"))


def test_a_session_left_by_a_search_killed_with_its_watcher_is_cleaned_on_the_next_start(tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    import psutil

    from autocompress.search._tune import clean_stale_sessions

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    session = tmp_path / "session_2026-12-06_00-00-00_000000_1"
    session.mkdir()
    # a process still holding the dead search's Ray session (its folder in the command line), and
    # one of a live search, whose note must be left alone
    left = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(120)", str(session)])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    notes = tmp_path / "cache" / "ray-sessions"
    notes.mkdir(parents=True)
    (notes / f"{dead.pid}.json").write_text(json.dumps({"pid": dead.pid, "created": 0.0, "session": str(session)}))
    me = psutil.Process()
    (notes / f"{me.pid}.json").write_text(json.dumps({"pid": me.pid, "created": me.create_time(),
                                                      "session": str(tmp_path / "live")}))
    try:
        assert clean_stale_sessions() == [str(session)]
        assert left.wait(timeout=10) is not None  # ended
        assert sorted(p.name for p in notes.iterdir()) == [f"{me.pid}.json"]
    finally:
        if left.poll() is None:
            left.kill()
