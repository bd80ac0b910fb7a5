"""Image folders too large to hold decoded stream from disk: each batch is read when asked for."""
import pickle

import numpy as np
import pytest
import torch

from autocompress.data import ImageFiles, batches, resolve_data


def _folder(root, classes=3, per_class=10, size=(100, 75), seed=0):
    """train/ and val/ of JPEGs at ImageNet-like proportions, each class its own mean colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                base = np.array([60 + 60 * c, 120, 200 - 60 * c])
                img = np.clip(base + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    return root


def test_a_large_image_folder_streams_with_the_imagenet_transform(tmp_path, monkeypatch):
    from autocompress.data._stream import read_resized

    monkeypatch.setenv("AUTOCOMPRESS_STREAM", "1")
    root = _folder(tmp_path / "imgs")
    bundle = resolve_data(f"imagefolder:{root}", val_split=6, normalize="imagenet")
    assert isinstance(bundle.train_x, ImageFiles) and isinstance(bundle.val_x, ImageFiles)
    assert bundle.input_shape == (3, 224, 224) and len(bundle.train_x) == 24 and len(bundle.val_x) == 6
    assert isinstance(bundle.test_x, ImageFiles) and len(bundle.test_y) == 15  # val/ became the test split
    # a batch is the file, shorter side to 256, centre 224, normalised: as decoding it by hand
    batch = bundle.val_x[torch.tensor([0, 3])]
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    by_hand = torch.from_numpy(read_resized(root / bundle.val_x.paths[3], 256, 224).copy()).permute(2, 0, 1) / 255
    assert batch.shape == (2, 3, 224, 224)
    assert torch.allclose(batch[1], (by_hand - mean[:, None, None]) / std[:, None, None], atol=1e-6)
    # what travels to a worker is the paths and the transform, not the pixels
    assert len(pickle.dumps(bundle)) < 20_000 < bundle.train_x.shape.numel()
    # the same fixed subset whoever reads it
    sub = bundle.subset_val(3)
    again = pickle.loads(pickle.dumps(bundle)).subset_val(3)
    assert sub.val_x.paths == again.val_x.paths and torch.equal(sub.val_x[:], again.val_x[:])
    assert sorted(sub.val_y.tolist()) == [0, 1, 2]  # class-balanced
    seen = sum(len(yb) for _, yb in batches(bundle.train_x, bundle.train_y, 5, shuffle=True))
    assert seen == 24


def test_streamed_and_in_memory_folders_give_the_same_images(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs", classes=2, per_class=6)
    monkeypatch.setenv("AUTOCOMPRESS_STREAM", "0")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    held = resolve_data(f"imagefolder:{root}", val_split=4, normalize="imagenet")
    monkeypatch.setenv("AUTOCOMPRESS_STREAM", "1")
    streamed = resolve_data(f"imagefolder:{root}", val_split=4, normalize="imagenet")
    assert isinstance(held.val_x, torch.Tensor) and isinstance(streamed.val_x, ImageFiles)
    assert torch.equal(held.val_y, streamed.val_y)
    assert torch.allclose(held.val_x, streamed.val_x[:], atol=1e-6)


def test_an_image_that_breaks_after_the_scan_is_the_mean_image_and_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_STREAM", "1")
    root = _folder(tmp_path / "imgs", classes=2, per_class=4)
    bundle = resolve_data(f"imagefolder:{root}", val_split=0, normalize="imagenet")
    (root / bundle.val_x.paths[1]).write_bytes(b"not a jpeg")
    batch = bundle.val_x[0:2]
    assert bundle.val_x.unreadable == [str(root / bundle.val_x.paths[1])]
    assert batch[1].abs().max() < 0.02  # the mean image is ~0 once normalised


@pytest.mark.slow
@pytest.mark.ray
def test_a_search_on_streamed_images_evaluates_the_same_subset_in_every_worker(tmp_path, monkeypatch):
    import autocompress

    monkeypatch.setenv("AUTOCOMPRESS_STREAM", "1")
    root = _folder(tmp_path / "imgs", classes=3, per_class=8)
    result = autocompress.search("tests.tiny_models:tiny_resnet", data=f"imagefolder:{root}", target="tpu-v1",
                                 trials=3, workers=2, algorithm="random", val_split=6, val_samples=6,
                                 constraints={"max_acc_drop": 100}, out=tmp_path / "run", log=lambda s: None,
                                 report=False)
    assert isinstance(result.prepared.data.val_x, ImageFiles)
    evaluated = [r for r in result.records if (r.get("metrics") or {}).get("accuracy") is not None]
    assert len(evaluated) == 3 and all(r["metrics"]["eval_images"] == 6 for r in evaluated)
    # the driver, reading the files itself, measures what the workers measured for each config
    for r in evaluated:
        assert result.reproduce(r["trial"]).accuracy == pytest.approx(r["metrics"]["accuracy"], abs=1e-9)


def test_a_validation_subset_keeps_the_whole_split_for_the_finish_but_not_for_workers(digits):
    sub = digits.subset_val(100)
    assert len(sub.val_y) == 100 and torch.bincount(sub.val_y).tolist() == [10] * 10  # class-balanced
    x, y = sub.whole_val  # the race and the finished figures decide on all of it
    assert torch.equal(y, digits.val_y) and torch.equal(x, digits.val_x)
    assert len(sub.subset_val(50).whole_val[1]) == len(digits.val_y)  # a subset of a subset: still the whole
    workers = sub.without_test()
    assert workers.all_val_y is None and len(workers.whole_val[1]) == 100
