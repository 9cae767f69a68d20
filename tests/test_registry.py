"""Registry: built-ins, plugin discovery through real entry points, errors, config specs."""

from __future__ import annotations

import pytest
from conftest import write_plugin

import hthlight
from hthlight.errors import ConfigError
from hthlight.mixers.attention import AttentionMixer
from hthlight.registry import (
    BUILTINS,
    KINDS,
    ComponentLoadError,
    DuplicateComponentError,
    Registry,
    UnknownComponentError,
    build_from_spec,
)

MIXER_SOURCE = """
import torch
from hthlight.mixers.base import TokenMixer

class IdentityMixer(TokenMixer):
    def __init__(self, dim, gain=1.0):
        super().__init__(dim)
        self.gain = gain

    def forward(self, x, grid):
        return self.gain * x
"""


def fresh_mixer_registry() -> Registry:
    return Registry("mixer", KINDS["mixer"], BUILTINS["mixer"])


def test_every_kind_has_a_registry_and_builtins_are_listed():
    assert set(KINDS) == {"mixer", "scan", "conditioner", "text_encoder", "vae", "scheduler"}
    assert {"attention", "hydra"} <= set(hthlight.available("mixer"))
    assert {"h", "v", "ht", "vt", "th", "tv"} <= set(hthlight.available("scan"))
    assert "rectified_flow" in hthlight.available("scheduler")


def test_build_passes_kwargs():
    mixer = hthlight.build("mixer", "attention", dim=32, num_heads=4)
    assert isinstance(mixer, AttentionMixer) and mixer.num_heads == 4


def test_unknown_name_lists_registered_names():
    with pytest.raises(UnknownComponentError) as info:
        hthlight.build("mixer", "hyrda", dim=8)
    message = str(info.value)
    assert "hyrda" in message and "attention" in message and "hydra" in message


def test_unknown_kind_lists_kinds():
    with pytest.raises(ConfigError, match="kinds: mixer, scan"):
        hthlight.available("mixers")


def test_unknown_kwarg_names_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) num_head;.*num_heads"):
        hthlight.build("mixer", "attention", dim=8, num_head=2)


def test_plugin_is_discovered_through_entry_point_and_imported_lazily(plugin_path):
    write_plugin(
        plugin_path,
        "fake-plugin-ok",
        "1.2.3",
        "fake_plugin_ok",
        MIXER_SOURCE,
        {"hthlight.mixers": {"identity": "fake_plugin_ok:IdentityMixer"}},
    )
    import sys

    reg = fresh_mixer_registry()
    assert "identity" in reg.names()
    entry = reg.entry("identity")
    assert entry.source == "distribution fake-plugin-ok 1.2.3"
    assert "fake_plugin_ok" not in sys.modules  # listing imports nothing
    mixer = reg.build("identity", dim=4, gain=2.0)
    assert mixer.gain == 2.0 and "fake_plugin_ok" in sys.modules


def test_duplicate_name_names_both_sources(plugin_path):
    write_plugin(
        plugin_path,
        "fake-plugin-a",
        "0.1",
        "fake_plugin_a",
        MIXER_SOURCE,
        {"hthlight.mixers": {"hydra": "fake_plugin_a:IdentityMixer"}},
    )
    with pytest.raises(DuplicateComponentError) as info:
        fresh_mixer_registry().names()
    assert "built-in" in str(info.value) and "fake-plugin-a 0.1" in str(info.value)


def test_duplicate_between_two_plugins_names_both_distributions(plugin_path):
    for dist in ("fake-plugin-a", "fake-plugin-b"):
        module = dist.replace("-", "_")
        write_plugin(
            plugin_path, dist, "0.1", module, MIXER_SOURCE, {"hthlight.mixers": {"same": f"{module}:IdentityMixer"}}
        )
    with pytest.raises(DuplicateComponentError) as info:
        fresh_mixer_registry().names()
    assert "fake-plugin-a" in str(info.value) and "fake-plugin-b" in str(info.value)


def test_failing_plugin_is_recorded_not_fatal(plugin_path):
    write_plugin(
        plugin_path,
        "fake-plugin-broken",
        "0.1",
        "fake_plugin_broken",
        "import not_a_real_dependency_xyz\n",
        {"hthlight.mixers": {"broken": "fake_plugin_broken:Mixer"}},
    )
    reg = fresh_mixer_registry()
    assert "broken" in reg.names()
    with pytest.raises(ComponentLoadError, match="not_a_real_dependency_xyz"):
        reg.build("broken", dim=4)
    entry = reg.entry("broken")
    assert entry.status.startswith("failed: ModuleNotFoundError")
    assert reg.build("attention", dim=8).dim == 8  # the rest still works


def test_environment_variable_disables_plugins(plugin_path, monkeypatch):
    write_plugin(
        plugin_path,
        "fake-plugin-ok",
        "1.0",
        "fake_plugin_ok",
        MIXER_SOURCE,
        {"hthlight.mixers": {"identity": "fake_plugin_ok:IdentityMixer"}},
    )
    monkeypatch.setenv("HTHLIGHT_NO_PLUGINS", "1")
    names = fresh_mixer_registry().names()
    assert "identity" not in names and "hydra" in names


def test_in_process_registration_and_unregister():
    reg = fresh_mixer_registry()

    @reg.register("twice")
    class Twice(AttentionMixer):
        pass

    assert reg.get("twice") is Twice
    assert reg.entry("twice").source.startswith("code (")
    with pytest.raises(DuplicateComponentError):
        reg.register("twice", AttentionMixer)
    reg.unregister("twice")
    assert "twice" not in reg.names()


@pytest.mark.parametrize(
    "spec",
    [
        "attention",
        {"name": "attention", "num_heads": 2},
        {"class_path": "hthlight.mixers.attention.AttentionMixer", "init_args": {"num_heads": 2}},
    ],
)
def test_specs_by_name_mapping_and_class_path(spec):
    mixer = build_from_spec("mixer", spec, dim=8)
    assert isinstance(mixer, AttentionMixer)


def test_spec_errors_are_clear():
    with pytest.raises(ConfigError, match="needs 'name'"):
        build_from_spec("mixer", {"num_heads": 2}, dim=8)
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_from_spec("mixer", {"class_path": "no.such.Module"}, dim=8)
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) d_stat"):
        build_from_spec("mixer", {"name": "hydra", "d_stat": 3}, dim=8)


def test_every_builtin_resolves_and_the_wheel_ships_every_package():
    from pathlib import Path

    from setuptools import find_packages

    for kind, names in BUILTINS.items():
        for name in names:
            assert callable(hthlight.registry(kind).get(name)), (kind, name)
    root = Path(__file__).resolve().parents[1]
    shipped = set(find_packages(str(root), include=["hthlight*"]))
    on_disk = {".".join(p.relative_to(root).parts[:-1]) for p in (root / "hthlight").rglob("*.py")}
    assert on_disk <= shipped, f"folders without __init__.py are left out of the wheel: {on_disk - shipped}"


def test_failed_plugin_names_the_missing_extra(plugin_path):
    write_plugin(
        plugin_path,
        "fake-plugin-fla",
        "0.2",
        "fake_plugin_fla",
        "import not_installed_kernels_xyz\n",
        {"hthlight.mixers": {"gla": "fake_plugin_fla:Mixer"}},
        requires=("hthlight", 'not-installed-kernels-xyz>=1; extra == "gpu"'),
    )
    reg = fresh_mixer_registry()
    with pytest.raises(ComponentLoadError) as info:
        reg.build("gla", dim=4)
    message = str(info.value)
    assert "mixer 'gla' from distribution fake-plugin-fla 0.2 failed to load: ModuleNotFoundError" in message
    assert "not installed: not-installed-kernels-xyz (extra 'gpu': pip install 'fake-plugin-fla[gpu]')" in message
    assert "hthlight (" not in message  # installed requirements are not listed
