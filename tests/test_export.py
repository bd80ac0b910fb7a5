"""Exporting a finished search's candidate and re-applying its config."""
import json

import pytest
import torch
import yaml

from tests.test_cli import TINY, _trials, cli, cli_process


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    r = cli_process("search", "--model", TINY, "--trials", "4", "--workers", "2", "--max-acc-drop", "100", "--out", str(out))
    assert r.returncode == 0, r.stderr[-1500:]
    return out


def _best(run_dir):
    pareto = json.loads((run_dir / "pareto.json").read_text())
    return max(pareto["candidates"], key=lambda c: c["energy_reduction"])


@pytest.mark.slow
def test_export_config_csv_and_torchscript_and_apply_reproduce_the_trial(run_dir, tmp_path, digits):
    best = _best(run_dir)
    record = next(t for t in _trials(run_dir) if t["trial"] == best["trial"])

    assert cli("export", str(run_dir), "--format", "yaml", "--out", str(tmp_path / "c.yaml")).returncode == 0
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == record["config"]
    assert cli("export", str(run_dir), "--pick", str(best["trial"]), "--format", "json",
               "--out", str(tmp_path / "c.json")).returncode == 0
    assert json.loads((tmp_path / "c.json").read_text()) == record["config"]

    assert cli("export", str(run_dir), "--format", "csv", "--out", str(tmp_path / "c.csv")).returncode == 0
    import pandas as pd
    table = pd.read_csv(tmp_path / "c.csv")
    assert int(table["macs"].sum()) == record["metrics"]["macs"]
    for name, lc in record["config"]["layers"].items():
        row = table[table["layer"] == name].iloc[0]
        assert row["weight_bits"] == lc["wbits"]

    r = cli("export", str(run_dir), "--format", "torch", "--out", str(tmp_path / "m.pt"))
    assert r.returncode == 0 and "TorchScript" in r.stdout, r.stderr[-1500:]
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        acc = (scripted(digits.val_x).argmax(1) == digits.val_y).float().mean().item()
    assert acc == pytest.approx(record["metrics"]["accuracy"], abs=1e-9)

    r = cli("apply", "--model", TINY, "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "a.pt"))
    assert r.returncode == 0, r.stderr[-1500:]
    assert f"accuracy {100 * record['metrics']['accuracy']:.2f}%" in r.stdout
    assert f"{record['metrics']['size_bytes'] / 1e6:.2f} MB" in r.stdout
    assert f"energy reduction {record['metrics']['energy_reduction']:.2f}x (modeled:tpu-v1)" in r.stdout


@pytest.mark.slow
def test_export_errors_are_one_line(run_dir, tmp_path):
    r = cli("export", str(run_dir), "--format", "onnx2", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown format 'onnx2'" in r.stderr
    r = cli("export", str(tmp_path), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "is not a run directory" in r.stderr
    r = cli("export", str(run_dir), "--pick", "99", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "has no trial 99" in r.stderr


@pytest.mark.slow
def test_export_onnx_reproduces_the_trial(run_dir, tmp_path, digits):
    import onnx
    import onnxruntime as ort

    best = _best(run_dir)
    record = next(t for t in _trials(run_dir) if t["trial"] == best["trial"])
    r = cli("export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0 and "ONNX opset 21, QDQ" in r.stdout, r.stderr[-1500:]
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    dq_weights = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    quantised = [name for name, lc in record["config"]["layers"].items() if lc.get("wbits")]
    assert quantised and all(f"{name}.weight" in dq_weights for name in quantised)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": digits.val_x.numpy()})[0]
    acc = float((logits.argmax(1) == digits.val_y.numpy()).mean())
    assert abs(acc - record["metrics"]["accuracy"]) * 100 <= 0.5


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 16])
def test_packed_integers_unpack_to_themselves(bits):
    from autocompress.export import _pack, _storage, _unpack

    qmax = 2 ** (bits - 1) - 1
    q = torch.randint(-qmax, qmax + 1, (7, 3, 3)).float()  # 63 values: not a multiple of 2 or 4
    q[0, 0, 0], q[0, 0, 1] = -qmax, qmax
    per, dtype = _storage(bits)
    packed = _pack(q, bits)
    assert packed.dtype == dtype and packed.numel() == -(-q.numel() // per)
    assert torch.equal(_unpack(packed, per, q.numel()).reshape(q.shape), q)


def test_torchscript_keeps_integer_weights_and_computes_what_the_model_does(tmp_path):
    from torch import nn

    from autocompress.compress.quantize import quantize_weights
    from autocompress.export import save_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    float_path = tmp_path / "float.pt"
    save_model(model, torch.zeros(1, 3, 12, 12), float_path)
    quantize_weights(model, {"0": 8, "3": 4, "7": 2})
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
    what = save_model(model, x[:1], tmp_path / "int.pt")
    assert "3 layers with packed integer weights" in what
    loaded = torch.jit.load(str(tmp_path / "int.pt"))
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-5)
    state = loaded.state_dict()
    assert {k: v.dtype for k, v in state.items() if k.endswith("weight_packed")} == {
        "0.weight_packed": torch.int8, "3.weight_packed": torch.uint8, "7.weight_packed": torch.uint8}
    assert not any(k in state for k in ("0.weight", "3.weight", "7.weight"))  # no float copy kept
    assert state["3.weight_packed"].numel() == 64 * 64 * 9 // 2  # two 4-bit weights a byte
    # the 64x64 conv dominates: at 4 bits it takes an eighth of its fp32 bytes
    assert (tmp_path / "int.pt").stat().st_size < 0.3 * float_path.stat().st_size


def _small_quantised_model(wbits: dict, abits: dict):
    """A conv net with batch norm (a negative scale, so folding flips integer signs), quantised."""
    from torch import nn

    from autocompress.compress.quantize import attach_activation_quantizers, calibrate_activations, quantize_weights

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    model[1].weight.data.uniform_(-1.5, 1.5)
    model[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(64, 3, 12, 12)
    calibrate_activations(model, attach_activation_quantizers(model, abits), x, torch.zeros(64, dtype=torch.long),
                          batches_=2, batch_size=32)
    quantize_weights(model, wbits)
    return model, x


def test_onnxruntime_quantises_the_exported_float_graph_to_our_integers_with_the_recipe(tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from autocompress.compress.quantize import weight_integers
    from autocompress.onnx_export import export_onnx, export_ort_overrides, onnx_session, ort_quantize_kwargs

    model, x = _small_quantised_model({"0": 8, "3": 4, "7": 3}, {"0": 8, "3": 8, "7": 8})
    graph, notes = export_ort_overrides(model, x[:1], tmp_path / "recipe.json")
    assert graph == tmp_path / "recipe.onnx" and any(n.startswith("7: 3-bit weights in a Int4") for n in notes)
    model_input, kwargs = ort_quantize_kwargs(tmp_path / "recipe.json")

    class Reader(CalibrationDataReader):  # onnxruntime calibrates only what the recipe leaves open: nothing
        def __init__(self):
            self.batches = iter([{"input": x[i:i + 16].numpy()} for i in range(0, 64, 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(model_input), str(tmp_path / "q.onnx"), Reader(), **kwargs)
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {t.name: t for t in q.graph.initializer}
    for name, kind in (("0", "INT8"), ("3", "INT4"), ("7", "INT4")):
        t = inits[f"{name}.weight_quantized"]
        assert onnx.TensorProto.DataType.Name(t.data_type) == kind
        ints = numpy_helper.to_array(t).astype(np.int64)
        # folding batch norm flips the sign of a channel whose BN scale is negative, nothing else
        assert np.array_equal(np.abs(ints), np.abs(weight_integers(model[int(name)]).numpy().astype(np.int64)))
    # the output of a Conv/Gemm stays float, as in the model: the same graph as our own QDQ export
    assert [n.op_type for n in q.graph.node].count("QuantizeLinear") == 3
    export_onnx(model, x[:1], tmp_path / "ours.onnx")
    ours = onnx_session(tmp_path / "ours.onnx").run(None, {"input": x.numpy()})[0]
    theirs = onnx_session(tmp_path / "q.onnx").run(None, {"input": x.numpy()})[0]
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.slow
def test_load_gives_back_the_search_result_and_rebuilds_its_model(run_dir, tmp_path, digits):
    import autocompress

    result = autocompress.load(run_dir)
    saved = json.loads((run_dir / "pareto.json").read_text())
    assert len(result.trials) == len(_trials(run_dir)) == 4
    assert sorted(result.pareto["trial"]) == sorted(c["trial"] for c in saved["candidates"])
    assert result.hypervolume == pytest.approx(saved["hypervolume"], rel=1e-12)
    best = result.best()
    record = next(t for t in _trials(run_dir) if t["trial"] == best["trial"])
    assert result.config(best).to_dict() == record["config"]
    model = result.apply(best)  # rebuilt from the run's settings: the model, its weights and data
    with torch.no_grad():
        acc = (model(digits.val_x).argmax(1) == digits.val_y).float().mean().item()
    assert acc == pytest.approx(record["metrics"]["accuracy"], abs=1e-9)
    path = result.export(best, "ort-overrides", tmp_path / "best.json")
    recipe = json.loads(path.read_text())
    quantised = [k for k, v in record["config"]["layers"].items() if v.get("wbits", 32) < 32]
    assert sorted(t[:-len(".weight")] for t in recipe["quantize_static"]["extra_options"]["TensorQuantOverrides"]
                  if t.endswith(".weight")) == sorted(quantised)
    with pytest.raises(autocompress.UserError, match="not a run directory"):
        autocompress.load(tmp_path)


@pytest.mark.slow
def test_export_writes_the_peer_recipes_of_the_picked_trial(run_dir, tmp_path):
    best = _best(run_dir)
    record = next(t for t in _trials(run_dir) if t["trial"] == best["trial"])
    floats = sorted(n for n, lc in record["config"]["layers"].items() if lc.get("wbits") is None)
    for fmt, key in (("nncf", "autocompress nncf v1"), ("inc", "autocompress inc v1")):
        r = cli("export", str(run_dir), "--format", fmt, "--out", str(tmp_path / f"b.{fmt}.json"))
        assert r.returncode == 0, r.stderr[-1500:]
        recipe = json.loads((tmp_path / f"b.{fmt}.json").read_text())
        assert recipe["format"] == key
        assert sorted(n for n, lay in recipe["layers"].items() if lay["searched_weight_bits"] is None) == floats


@pytest.mark.slow
def test_nncf_consumes_the_nncf_export_of_a_searched_model(run_dir, tmp_path, digits, monkeypatch):
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'nncf>=3.4')")
    from nncf.torch.quantization import extensions

    import autocompress
    from autocompress.peer import nncf_quantize

    # NNCF's C++ kernels take ~40 s to compile on first use; its own torch fallback computes the same
    monkeypatch.setattr(extensions.QuantizedFunctionsCPULoader, "load",
                        classmethod(lambda cls: extensions.ReferenceQuantizedFunctions))
    assert cli("export", str(run_dir), "--format", "nncf", "--out", str(tmp_path / "b.json")).returncode == 0
    recipe = json.loads((tmp_path / "b.json").read_text())
    structure = autocompress.load(run_dir).apply("best", structure_only=True)
    quantized = nncf_quantize(structure, recipe, [digits.val_x[i:i + 32] for i in range(0, 128, 32)])
    hooks = quantized.__nncf_hooks.pre_hooks
    int8 = {n for n, lay in recipe["layers"].items() if lay["searched_weight_bits"] is not None}
    got = {n for n in recipe["layers"] if any(k.startswith(n.replace(".", "/") + "/") and k.endswith("__1")
                                              for k in hooks)}
    assert got == int8  # a weight quantizer on exactly the layers the search quantised
    with torch.no_grad():
        agree = (quantized(digits.val_x).argmax(1) == structure(digits.val_x).argmax(1)).float().mean().item()
    assert agree > 0.9  # int8 of the float structure: nearly the same predictions
