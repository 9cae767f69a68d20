"""Block layouts: the HTH-5B stack is expressible exactly; bad layouts are reported."""

from __future__ import annotations

import pytest

from hthlight.errors import ConfigError
from hthlight.models.layout import expand_blocks, expand_layout

HTH_LAYOUT = [
    {
        "repeat": 3,
        "layout": [
            {"mixer": {"name": "hydra", "d_state": 256}, "repeat": 10, "scans": ["h", "v"]},
            {"mixer": {"name": "attention", "num_heads": 32, "qk_norm": True}},
        ],
    }
]


def test_hth_5b_layout_expands_to_33_blocks_with_alternating_scans():
    specs = expand_layout(HTH_LAYOUT)
    assert len(specs) == 33
    for group in range(3):
        blocks = specs[11 * group : 11 * (group + 1)]
        assert [b["name"] for b in blocks] == ["hydra"] * 10 + ["attention"]
        assert [b["scan"] for b in blocks[:10]] == ["h", "v"] * 5
        assert all(b["d_state"] == 256 for b in blocks[:10])
    specs[0]["d_state"] = 1  # expanded specs are independent copies, also across group repeats
    assert specs[2]["d_state"] == 256 and specs[11]["d_state"] == 256


def test_string_entries_and_class_path_scans():
    specs = expand_layout(
        ["attention", {"mixer": {"class_path": "a.B", "init_args": {"k": 1}}, "repeat": 2, "scans": ["th", "tv"]}]
    )
    assert specs[0] == "attention"
    assert [s["init_args"]["scan"] for s in specs[1:]] == ["th", "tv"]
    assert all(s["init_args"]["k"] == 1 for s in specs[1:])


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ([], "no blocks"),
        ("hydra", "must be a list"),
        ([{"mixer": "hydra", "repaet": 2}], "unknown layout key"),
        ([{"mixer": "hydra", "repeat": 0}], "positive integer"),
        ([{"repeat": 2}], "exactly one of 'mixer' or 'layout'"),
        ([{"mixer": "hydra", "scans": "hv"}], "non-empty list"),
        ([{"layout": ["hydra"], "scans": ["h"]}], "belongs on a mixer entry"),
        ([3], "mixer name or a mapping"),
    ],
)
def test_bad_layouts(layout, message):
    with pytest.raises(ConfigError, match=message):
        expand_layout(layout)


def test_block_options_travel_with_each_block():
    blocks = expand_blocks([{"repeat": 2, "layout": ["attention", {"mixer": "bi_ssm", "block": {"mlp_ratio": 0}}]}])
    assert [b.mixer for b in blocks] == ["attention", "bi_ssm"] * 2
    assert [b.options for b in blocks] == [{}, {"mlp_ratio": 0}] * 2
    with pytest.raises(ConfigError, match="unknown block option"):
        expand_blocks([{"mixer": "hydra", "block": {"mlp": 0}}])
    with pytest.raises(ConfigError, match="'block' belongs on a mixer entry"):
        expand_blocks([{"layout": ["hydra"], "block": {"mlp_ratio": 0}}])
