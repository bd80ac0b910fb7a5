"""SearchSpace laid over a LayerTable: which params come out, their values, and the config an
assignment of them makes. No Ray, no training: each test runs in well under a second.

Expectations are written out by hand from the tiny ResNet's layer names (traced once below):

    conv1 | layer1.{0,1}.conv{1,2} | layer2.0.{conv1,conv2,downsample.0} layer2.1.conv{1,2}
    | layer3.* (as layer2) | layer4.* (as layer2) | fc          (21 layers: first conv1, last fc)

Channel groups (residual stages share one, named by their first producer): conv1 = {conv1,
layer1.0.conv2, layer1.1.conv2}; layerN.0.conv2 = {layerN.0.conv2, layerN.0.downsample.0,
layerN.1.conv2} for N = 2..4; every other conv1 of a block has its own; fc has none. Droppable
blocks (input and output shapes match): layer1.0, layer1.1, layer2.1, layer3.1, layer4.1.
"""
import pytest
import torch

from autocompress._errors import UserError
from autocompress.config import CompressionConfig
from autocompress.graph import trace
from autocompress.hardware import load_profile
from autocompress.space import Param, load_space
from tests.tiny_models import BranchyNet, tiny_resnet

STAGE = lambda n: [f"layer{n}.0.conv1", f"layer{n}.0.conv2", f"layer{n}.0.downsample.0",  # noqa: E731
                   f"layer{n}.1.conv1", f"layer{n}.1.conv2"]
ALL_LAYERS = (["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
              + STAGE(2) + STAGE(3) + STAGE(4) + ["fc"])
# every group whose producers exclude conv1 (the stem): 11 of the 12, in execution order
INNER_GROUPS = ["layer1.0.conv1", "layer1.1.conv1",
                "layer2.0.conv1", "layer2.0.conv2", "layer2.1.conv1",
                "layer3.0.conv1", "layer3.0.conv2", "layer3.1.conv1",
                "layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1"]


@pytest.fixture(scope="module")
def table():
    return trace(tiny_resnet(), torch.zeros(1, 3, 8, 8))


@pytest.fixture(scope="module")
def branchy():
    return trace(BranchyNet(), torch.zeros(1, 3, 8, 8))


@pytest.fixture
def space_file(tmp_path):
    def write(body: str, name: str = "mine.yaml") -> str:
        path = tmp_path / name
        path.write_text(body)
        return str(path)
    return write


def bind(space_file, table, body):
    return load_space(space_file(body)).bind(table)


def by_name(bound):
    return {p.name: p for p in bound.params}


def test_the_tiny_resnet_has_the_layers_this_file_assumes(table):
    assert table.names == ALL_LAYERS
    assert list(table.blocks) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert list(table.groups) == ["conv1"] + INNER_GROUPS
    assert table.groups["conv1"].producers == ("conv1", "layer1.0.conv2", "layer1.1.conv2")
    assert table.groups["layer3.0.conv2"].producers == ("layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2")


# --- which params come out ----------------------------------------------------------------------
def test_prune_per_group_skips_groups_with_an_excluded_producer(space_file, table):
    bound = bind(space_file, table, "name: s\nexclude: [first, last]\nknobs:\n"
                                    "  - {knob: prune, per: group, choices: [0.0, 0.25, 0.5]}\n")
    # the stem's group also holds layer1.*.conv2 (matched), but its producer conv1 is excluded
    assert [p.name for p in bound.params] == [f"prune:{g}" for g in INNER_GROUPS]
    for p in bound.params:
        assert p.knob == "prune" and p.layers == (p.name.split(":", 1)[1],)
        assert p.choices == (0.0, 0.25, 0.5) and p.categorical


def test_prune_per_group_without_exclusions_has_every_group_once(space_file, table):
    bound = bind(space_file, table, "name: s\nknobs:\n  - {knob: prune, per: group, choices: [0.0, 0.5]}\n")
    # the stem's group comes first (conv1 runs first); layer1.*.conv2 add no group of their own
    assert [p.name for p in bound.params] == ["prune:conv1"] + [f"prune:{g}" for g in INNER_GROUPS]


def test_wbits_per_layer_is_one_param_per_matched_layer(space_file, table):
    bound = bind(space_file, table, "name: s\nknobs:\n  - {knob: wbits, per: layer, layers: ['layer4.*'], "
                                    "choices: [4, 8]}\n")
    assert [p.name for p in bound.params] == [f"wbits:{n}" for n in STAGE(4)]
    assert all(p.layers == (p.name[len("wbits:"):],) and p.choices == (4, 8) for p in bound.params)


def test_per_all_is_one_param_over_every_matched_layer_named_by_the_rule(space_file, table):
    bound = bind(space_file, table, "name: s\nexclude: [last]\nknobs:\n"
                                    "  - {knob: wbits, per: layer, layers: ['layer2.*'], choices: [4, 8]}\n"
                                    "  - {knob: abits, per: all, name: act, choices: [4, 8]}\n"
                                    "  - {knob: prune, per: all, layers: ['layer3.*'], choices: [0.0, 0.5]}\n")
    params = by_name(bound)
    assert list(params) == [f"wbits:{n}" for n in STAGE(2)] + ["abits:act", "prune:rule2"]
    assert params["abits:act"].layers == tuple(ALL_LAYERS[:-1])  # 'last' (fc) excluded
    # per: all prune keeps the layers matched that output a group (layer3.*: all five do)
    assert params["prune:rule2"].layers == tuple(STAGE(3))


def test_drop_per_block_matches_block_names(space_file, table):
    bound = bind(space_file, table, "name: s\nknobs:\n  - {knob: drop, per: block, layers: ['layer*'], "
                                    "exclude: ['layer1.*'], choices: [0, 1]}\n")
    assert [p.name for p in bound.params] == ["drop:layer2.1", "drop:layer3.1", "drop:layer4.1"]
    assert [p.layers for p in bound.params] == [("layer2.1",), ("layer3.1",), ("layer4.1",)]


def test_width_is_a_single_arch_param(space_file, table):
    bound = bind(space_file, table, "name: s\nknobs:\n  - {knob: width, per: all, choices: [0.5, 0.75, 1.0]}\n")
    assert bound.params == [Param("width", "width", ("arch.width",), choices=(0.5, 0.75, 1.0))]


def test_rank_skips_grouped_convs(space_file, branchy):
    assert branchy.names == ["stem", "left.0", "right.0", "dw.0", "project", "head"]
    bound = bind(space_file, branchy, "name: s\nknobs:\n  - {knob: rank, per: layer, choices: [0.5, 1.0]}\n")
    # dw.0 is depthwise (groups = 24): it has no rank to cut
    assert [p.name for p in bound.params] == ["rank:stem", "rank:left.0", "rank:right.0", "rank:project",
                                              "rank:head"]


def test_exclusions_glob_first_last_and_rule_level_add_up(space_file, table):
    bound = bind(space_file, table, "name: s\nexclude: [first, 'layer[12].*']\nknobs:\n"
                                    "  - {knob: wbits, per: layer, exclude: [last, '*.downsample.*'], "
                                    "choices: [4, 8]}\n")
    expected = [n for n in STAGE(3) + STAGE(4) if "downsample" not in n]
    assert [p.name for p in bound.params] == [f"wbits:{n}" for n in expected]


def test_a_later_rule_overrides_an_earlier_one_for_its_layers(space_file, table):
    bound = bind(space_file, table, "name: s\nknobs:\n"
                                    "  - {knob: wbits, per: all, name: most, choices: [4, 8]}\n"
                                    "  - {knob: wbits, per: layer, layers: [first, last], choices: [8, 16]}\n")
    params = by_name(bound)
    assert list(params) == ["wbits:most", "wbits:conv1", "wbits:fc"]
    assert params["wbits:most"].layers == tuple(ALL_LAYERS[1:-1])
    assert params["wbits:conv1"].choices == (8, 16) and params["wbits:fc"].choices == (8, 16)


def test_range_and_step_become_a_numeric_param(space_file, table):
    bound = bind(space_file, table, "name: s\nexclude: [first, last]\nknobs:\n"
                                    "  - {knob: prune, per: group, layers: ['layer4.0.conv1'], "
                                    "range: [0.1, 0.6], step: 0.05}\n")
    (p,) = bound.params
    assert p == Param("prune:layer4.0.conv1", "prune", ("layer4.0.conv1",), None, 0.1, 0.6, 0.05)
    assert not p.categorical
    assert bound.searchable == [p]
    # an unassigned range param takes its low end
    assert bound.config({}).layers["layer4.0.conv1"].prune == pytest.approx(0.1)


def test_searchable_leaves_out_single_choice_params(space_file, table):
    bound = bind(space_file, table, "name: s\nexclude: [first, last]\nknobs:\n"
                                    "  - {knob: wbits, per: layer, layers: ['layer4.1.*'], choices: [4, 8]}\n"
                                    "  - {knob: abits, per: all, name: a, choices: [8]}\n")
    assert [p.name for p in bound.params] == ["wbits:layer4.1.conv1", "wbits:layer4.1.conv2", "abits:a"]
    assert [p.name for p in bound.searchable] == ["wbits:layer4.1.conv1", "wbits:layer4.1.conv2"]


def test_a_space_that_matches_nothing_is_a_user_error(space_file, table):
    with pytest.raises(UserError, match="touches no layer"):
        bind(space_file, table, "name: s\nknobs:\n  - {knob: wbits, layers: ['encoder.*'], choices: [4]}\n")


# --- restricting to a target ----------------------------------------------------------------------
BITS_SPACE = ("name: s\nexclude: [first, last]\nknobs:\n"
              "  - {knob: prune, per: group, layers: ['layer4.0.conv1'], choices: [0.0, 0.5]}\n"
              "  - {knob: wbits, per: layer, layers: ['layer4.1.conv2'], choices: [2, 4, 6, 8]}\n"
              "  - {knob: abits, per: all, name: a, choices: [2, 4, 8]}\n")


def test_restrict_to_an_int8_only_target_drops_narrower_bits(space_file, table):
    # edge-tpu computes int8 x int8 only and stores weights unpacked: narrower widths gain nothing
    bound = bind(space_file, table, BITS_SPACE).restrict_to(load_profile("edge-tpu"))
    params = by_name(bound)
    assert params["prune:layer4.0.conv1"].choices == (0.0, 0.5)
    assert params["wbits:layer4.1.conv2"].choices == (8,)
    assert params["abits:a"].choices == (8,)
    assert bound.channel_multiple == 1
    assert any("wbits below 8 dropped" in n for n in bound.notes)
    assert any("abits below 8 dropped" in n for n in bound.notes)
    assert [p.name for p in bound.searchable] == ["prune:layer4.0.conv1"]


def test_restrict_to_a_packed_target_keeps_weight_bits_and_sets_the_channel_multiple(space_file, table):
    # nvidia-t4: int4 is its narrowest operand; weights stored packed; channels in multiples of 8
    bound = bind(space_file, table, BITS_SPACE).restrict_to(load_profile("nvidia-t4"))
    params = by_name(bound)
    assert params["wbits:layer4.1.conv2"].choices == (2, 4, 6, 8)  # packed: narrower weights still save bytes
    assert params["abits:a"].choices == (4, 8)
    assert bound.channel_multiple == 8
    assert any("multiples of 8" in n for n in bound.notes)
    assert bound.config({}).channel_multiple == 8


def test_restrict_to_none_is_the_same_space(space_file, table):
    bound = bind(space_file, table, BITS_SPACE)
    assert bound.restrict_to(None) is bound


def test_restrict_bits_moves_weight_choices_to_the_nearest_width_inside(space_file, table):
    bound = bind(space_file, table, "name: s\nknobs:\n"
                                    "  - {knob: wbits, per: layer, layers: ['fc'], choices: [2, 3, 4, 6, 8, 16]}\n"
                                    "  - {knob: abits, per: layer, layers: ['fc'], choices: [2, 16]}\n")
    inside = by_name(bound.restrict_bits(4, 8))
    assert inside["wbits:fc"].choices == (4, 6, 8)  # 2, 3 -> 4; 16 -> 8
    assert inside["abits:fc"].choices == (2, 16)  # activations are not bounded by it
    assert by_name(bound.restrict_bits(None, 4))["wbits:fc"].choices == (2, 3, 4)
    assert by_name(bound.restrict_bits(5, None))["wbits:fc"].choices == (5, 6, 8, 16)
    assert any("moved inside the bounds" in n for n in bound.restrict_bits(4, 8).notes)
    assert bound.restrict_bits(None, None) is bound
    assert bound.restrict_bits(2, 16).notes == []  # nothing moved, nothing said


# --- config(values) ----------------------------------------------------------------------------------
FULL_SPACE = ("name: s\nexclude: [first, last]\nknobs:\n"
              "  - {knob: prune, per: group, layers: ['layer2.*'], choices: [0.0, 0.25, 0.5]}\n"
              "  - {knob: wbits, per: layer, layers: ['layer4.1.*'], choices: [4, 8]}\n"
              "  - {knob: abits, per: all, name: a, layers: ['layer3.1.*'], choices: [8, 16]}\n"
              "  - {knob: rank, per: layer, layers: ['layer4.0.conv1', 'layer4.0.conv2'], choices: [0.5, 1.0]}\n"
              "  - {knob: width, per: all, choices: [1.0, 0.75]}\n"
              "  - {knob: drop, per: block, layers: ['layer3.1', 'layer4.1'], choices: [0, 1]}\n")


def test_config_turns_an_assignment_into_per_layer_settings(space_file, table):
    bound = bind(space_file, table, FULL_SPACE)
    assert [p.name for p in bound.params] == [
        "prune:layer2.0.conv1", "prune:layer2.0.conv2", "prune:layer2.1.conv1",
        "wbits:layer4.1.conv1", "wbits:layer4.1.conv2", "abits:a",
        "rank:layer4.0.conv1", "rank:layer4.0.conv2", "width", "drop:layer3.1", "drop:layer4.1"]
    config = bound.config({
        "prune:layer2.0.conv2": 0.5, "prune:layer2.1.conv1": 0.25,
        "wbits:layer4.1.conv1": 4.0,  # samplers hand out floats: bits become ints
        "abits:a": 16, "rank:layer4.0.conv1": 0.5, "rank:layer4.0.conv2": 1.0,
        "width": 0.75, "drop:layer3.1": 1, "drop:layer4.1": 0}, meta={"trial": 7})
    assert isinstance(config, CompressionConfig)
    layers = {k: v.model_dump() for k, v in config.layers.items()}
    assert layers == {
        # prune:layer2.0.conv1 missing: its first choice (0.0) is recorded on the group's lead layer
        "layer2.0.conv1": {"prune": 0.0, "wbits": None, "abits": None, "rank": None},
        "layer2.0.conv2": {"prune": 0.5, "wbits": None, "abits": None, "rank": None},
        "layer2.1.conv1": {"prune": 0.25, "wbits": None, "abits": None, "rank": None},
        "layer4.1.conv1": {"prune": 0.0, "wbits": 4, "abits": None, "rank": None},
        "layer4.1.conv2": {"prune": 0.0, "wbits": 4, "abits": None, "rank": None},  # missing: first choice
        "layer3.1.conv1": {"prune": 0.0, "wbits": None, "abits": 16, "rank": None},
        "layer3.1.conv2": {"prune": 0.0, "wbits": None, "abits": 16, "rank": None},
        "layer4.0.conv1": {"prune": 0.0, "wbits": None, "abits": None, "rank": 0.5},
        # rank 1.0 keeps layer4.0.conv2 whole: no entry at all
    }
    assert type(config.layers["layer4.1.conv1"].wbits) is int
    assert config.arch.width == 0.75 and config.arch.drop == ["layer3.1"]
    assert config.meta == {"trial": 7} and config.channel_multiple == 1 and config.clip is None


def test_config_of_nothing_is_every_param_at_its_first_value(space_file, table):
    bound = bind(space_file, table, FULL_SPACE)
    config = bound.config({})
    assert config.arch.width == 1.0 and config.arch.drop == []
    assert {k: v.prune for k, v in config.layers.items() if k.startswith("layer2")} == \
        {"layer2.0.conv1": 0.0, "layer2.0.conv2": 0.0, "layer2.1.conv1": 0.0}
    assert config.layers["layer4.1.conv2"].wbits == 4
    assert config.layers["layer4.0.conv1"].rank == 0.5  # rank's first choice is 0.5


def test_pruning_a_group_param_prunes_the_whole_residual_stage_when_resolved(space_file, table):
    from autocompress.config import resolve

    bound = bind(space_file, table, FULL_SPACE)
    r = resolve(table, bound.config({"prune:layer2.0.conv2": 0.5}))
    out = dict(zip(r.names, r.out_channels.tolist()))
    # the group of layer2.0.conv2 (16 channels) is also layer2.0.downsample.0 and layer2.1.conv2
    assert [out[n] for n in ("layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2")] == [8, 8, 8]
    assert out["layer2.0.conv1"] == 16 and out["layer2.1.conv1"] == 16


# --- bad rules are one-line user errors naming the file and the field ----------------------------------
@pytest.mark.parametrize("rule, field, message", [
    ("{knob: sparsity, choices: [0.5]}", "knobs.0.knob", "unknown knob 'sparsity'; valid: prune, wbits"),
    ("{knob: prune, per: group, choices: [0.0], range: [0.0, 0.5]}", "knobs.0", "exactly one of 'choices' or 'range'"),
    ("{knob: prune, per: group}", "knobs.0", "exactly one of 'choices' or 'range'"),
    ("{knob: prune, per: group, choices: []}", "knobs.0", "'choices' is empty"),
    ("{knob: prune, per: group, choices: [0.0, 1.0]}", "knobs.0", "pruning ratios must be in [0, 1)"),
    ("{knob: wbits, choices: [4, 7]}", "knobs.0", "unsupported bit-width 7"),
    ("{knob: abits, range: [4, 8]}", "knobs.0", "abits takes 'choices' (bit-widths), not a range"),
    ("{knob: rank, choices: [0.0, 1.0]}", "knobs.0", "rank ratios must be in (0, 1]"),
    ("{knob: drop, per: block, choices: [0, 2]}", "knobs.0", "drop takes choices 0"),
    ("{knob: width, per: layer, choices: [0.5, 1.0]}", "knobs.0", "per: all"),
    ("{knob: wbits, per: group, choices: [4, 8]}", "knobs.0", "per: group applies to the prune knob only"),
    ("{knob: prune, per: layer, choices: [0.0, 0.5]}", "knobs.0", "prune is chosen per channel group"),
    ("{knob: prune, per: block, choices: [0.0]}", "knobs.0", "per: block is for the drop knob only"),
    ("{knob: prune, per: group, range: [0.5, 0.2]}", "knobs.0", "range [0.5, 0.2] is empty"),
    ("{knob: prune, per: group, range: [0.0, 0.5], step: 0}", "knobs.0.step", "greater than 0"),
    ("{knob: prune, per: group, range: [0.0, .inf]}", "knobs.0.range.1", "finite number"),
    ("{knob: prune, per: group, layer: [conv1], choices: [0.0]}", "knobs.0.layer", "Extra inputs are not permitted"),
    ("{knob: prune, per: channel, choices: [0.0]}", "knobs.0.per", "Input should be 'group'"),
])
def test_bad_rules_are_one_line_user_errors(space_file, rule, field, message):
    # the bad rule comes second, after a good one: the error must point at knobs.1
    path = space_file(f"name: bad\nknobs:\n  - {{knob: wbits, choices: [8]}}\n  - {rule}\n", name="bad.yaml")
    with pytest.raises(UserError) as info:
        load_space(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("bad.yaml: field ")
    assert f"'{field.replace('knobs.0', 'knobs.1')}'" in text
    assert message in text


def test_a_space_without_knobs_or_with_unknown_top_level_fields_is_refused(space_file):
    with pytest.raises(UserError, match="field 'knobs'"):
        load_space(space_file("name: empty\nknobs: []\n"))
    with pytest.raises(UserError, match="field 'knob'.*Extra inputs"):
        load_space(space_file("name: typo\nknob: []\nknobs:\n  - {knob: wbits, choices: [8]}\n"))
