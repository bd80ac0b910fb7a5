import pytest
import torch

from autocompress import UserError
from autocompress.graph import trace
from autocompress.models import build_model, load_weights
from pathlib import Path

SHARED_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "resnet18_cifar10.pt"


def test_resnet18_224_matches_torchvision_published_figures():
    model, desc = build_model("resnet18", num_classes=1000, input_shape=(3, 224, 224))
    assert "imagenet stem" in desc
    table = trace(model, torch.zeros(1, 3, 224, 224))
    assert table.total_macs == pytest.approx(1.81e9, rel=0.01)
    assert table.total_params == pytest.approx(11.69e6, rel=0.01)
    assert len(table) == 21  # 20 convs (3 downsample) + fc


def test_small_inputs_get_the_cifar_stem_and_it_can_be_forced():
    model, desc = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity) and "cifar stem" in desc
    forced, _ = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32), stem="imagenet")
    assert forced.conv1.kernel_size == (7, 7)


@pytest.mark.skipif(not SHARED_MODEL.exists(), reason="shared CIFAR-10 checkpoint not present")
def test_torchvision_style_checkpoint_loads():
    model, _ = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    load_weights(model, SHARED_MODEL)
    state = torch.load(SHARED_MODEL, weights_only=True)
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_mismatched_weights_name_the_first_bad_key(tmp_path):
    model, _ = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    state = model.state_dict()
    state["fc.weight"] = torch.zeros(7, 512)
    state["fc.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(UserError, match="'fc.weight' has shape"):
        load_weights(model, tmp_path / "w.pt")
    del state["fc.weight"]
    torch.save(state, tmp_path / "w2.pt")
    with pytest.raises(UserError, match="key 'fc.weight' is missing"):
        load_weights(model, tmp_path / "w2.pt")


def test_user_model_by_module_path_and_unknown_names():
    model, desc = build_model("tests.tiny_models:BranchyNet", num_classes=4, input_shape=(3, 8, 8))
    assert model.head.out_features == 4 and "user model" in desc
    with pytest.raises(UserError, match="Did you mean 'resnet18'"):
        build_model("resnet19", num_classes=10, input_shape=(3, 8, 8))
    with pytest.raises(UserError, match="no callable"):
        build_model("tests.tiny_models:Nope", num_classes=10, input_shape=(3, 8, 8))


def test_channel_groups_follow_residual_links():
    model, _ = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    table = trace(model, torch.zeros(1, 3, 32, 32))
    stage2 = table.groups[table["layer2.0.conv2"].out_group]
    assert set(stage2.producers) == {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"}
    assert table["layer2.0.conv1"].out_group == "layer2.0.conv1"  # a block's inner channels are free
    assert table["fc"].out_group is None  # the classifier's outputs are never pruned
    assert table["fc"].in_groups == table["layer4.1.conv2"].out_groups


def test_depthwise_conv_shares_its_producers_group():
    from tests.tiny_models import BranchyNet

    table = trace(BranchyNet(), torch.zeros(1, 3, 8, 8))
    dw = table["dw.0"]
    assert dw.depthwise and dw.in_groups == dw.out_groups == ("left.0", "right.0")
    # the concatenation: each branch's group also covers its half of the depthwise conv
    assert set(table.groups["left.0"].producers) == {"left.0", "dw.0"}
    assert table["project"].in_groups == ("left.0", "right.0")


def test_forward_failure_is_a_user_error():
    model, _ = build_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(UserError, match="forward pass fails"):
        trace(model, torch.zeros(1, 1, 32, 32))
