"""``hthlight bench``: the sampling and training benchmarks run, report rows, and count FLOPs by hand."""

from __future__ import annotations

import json

import pytest

from hthlight import bench
from hthlight.bench import mixer_flops, model_flops_per_sample, transformer_twin
from hthlight.cli import main
from hthlight.models import presets
from hthlight.models.denoiser import Denoiser, DenoiserConfig
from hthlight.models.layout import expand_layout

TINY = ["dim=32", "heads=2", "groups=1", "hydra_per_group=2", "d_state=8", "headdim=16", "text_width=16"]


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_bench_sample_table_and_json(tmp_path, capsys):
    out = tmp_path / "sample.json"
    argv = ["bench", "sample", "--preset", "hth-s", "--override", *TINY, "--grids", "4x4", "2x4x4"]
    assert main([*argv, "--steps", "2", "--context-tokens", "3", "--out", str(out)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("hth-s", "4x4", "16"),
        ("hth-s", "2x4x4", "32"),
        ("transformer", "4x4", "16"),
        ("transformer", "2x4x4", "32"),
    ]
    assert all(float(r[4]) > 0 for r in rows)
    assert rows[0][6] != "-" and rows[2][6] == "-"  # speed-up on the HTH rows only
    report = json.loads(out.read_text())
    assert report["device_type"] == "cpu" and report["torch"] and "bench sample" in report["command"]
    assert len(report["rows"]) == 4 and all(r["seconds"] > 0 for r in report["rows"])
    hth, twin = report["rows"][0], report["rows"][2]
    assert hth["speedup"] == pytest.approx(twin["seconds"] / hth["seconds"])


def test_bench_train_throughput_and_mfu(tmp_path, capsys):
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--presets", "hth-s", "--override", *TINY, "--grids", "4x4", "8x8", "--steps", "1"]
    assert main([*argv, "--batch-size", "2", "--context-tokens", "3", "--peak-tflops", "1", "--out", str(out)]) == 0
    assert len(_table_rows(capsys.readouterr().out)) == 2
    rows = json.loads(out.read_text())["rows"]
    config = presets.config("hth-s", **{k: int(v) for k, v in (item.split("=") for item in TINY)})
    for row, grid in zip(rows, [(1, 4, 4), (1, 8, 8)]):
        assert row["samples_per_s"] == pytest.approx(2 / row["step_s"])
        assert row["tokens_per_s"] == pytest.approx(row["samples_per_s"] * row["tokens"])
        flops = 3 * model_flops_per_sample(config, grid, context_tokens=3)
        assert row["mfu"] == pytest.approx(flops * row["samples_per_s"] / 1e12)


def test_bench_train_profile_splits_one_step_by_category(tmp_path, capsys):
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--presets", "hth-s", "--override", *TINY, "--grids", "4x4", "--steps", "1"]
    assert main([*argv, "--context-tokens", "3", "--profile", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "one step profiled, operator self time (CPU)" in printed
    (row,) = json.loads(out.read_text())["rows"]
    times = row["time_ms_by_category"]
    assert list(times) == [name for name, _ in bench.TIME_CATEGORIES] + ["other"]
    assert times["matrix products"] > 0 and times["other"] > 0  # the linear layers; the PyTorch Hydra path
    assert times["hydra kernels"] == 0  # no Triton on the CPU
    assert sum(times.values()) < 1e3 * row["step_s"] * 5  # one step's worth, not the whole run


@pytest.mark.parametrize(
    "kernel, category",
    [
        ("_conv_dx_dw_kernel", "hydra kernels"),
        ("_dw_kernel", "hydra kernels"),
        ("nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NNN", "matrix products"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention"),
        ("void at::native::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata<4>>", "optimizer"),
        ("triton_poi_fused_cat_7", "compiled elementwise"),
        ("aten::addmm", "matrix products"),
        ("aten::_foreach_addcdiv_", "optimizer"),
        ("void at::native::vectorized_elementwise_kernel<8, CUDAFunctor_add<c10::BFloat16>>", None),
    ],
)
def test_time_categories_name_the_kernels_of_a_step(kernel, category):
    """The first matching pattern wins: a Hydra conv kernel is not counted as a matrix product."""
    import re

    found = next((name for name, pattern in bench.TIME_CATEGORIES if re.search(pattern, kernel)), None)
    assert found == category


def test_compile_option_compiles_the_blocks_of_each_model(monkeypatch, capsys):
    import hthlight.bench as bench

    compiled = []
    monkeypatch.setattr(bench, "compile_blocks", lambda model: compiled.append(model) or model)
    argv = ["bench", "train", "--presets", "hth-s", "--override", *TINY, "--grids", "4x4", "--steps", "1"]
    assert main([*argv, "--context-tokens", "3", "--compile"]) == 0
    assert len(compiled) == 1 and isinstance(compiled[0], Denoiser)
    assert main([*argv, "--context-tokens", "3"]) == 0 and len(compiled) == 1  # off by default


def test_timed_steps_run_fewer_steps_and_scale(monkeypatch):
    """``--timed-steps K``: K model calls are timed and the time is scaled to ``--steps``."""
    import hthlight.bench as bench

    calls = []

    def fake_timed(fn, device, repeats):
        calls.clear()
        fn()
        return float(len(calls))  # "one second per step"

    def model(x, t, batch):
        calls.append(t)
        return x

    model.config = _tiny()
    monkeypatch.setattr(bench, "timed", fake_timed)
    monkeypatch.setattr(bench, "make_batch", lambda *args: None)
    kwargs = dict(grid=(1, 2, 2), device=bench.torch.device("cpu"), dtype=bench.torch.float32, warmup=0)
    assert bench.euler_sampling_seconds(model, steps=10, timed_steps=2, **kwargs) == pytest.approx(10.0)
    assert len(calls) == 2
    assert bench.euler_sampling_seconds(model, steps=3, timed_steps=8, **kwargs) == pytest.approx(3.0)
    assert len(calls) == 3


def _tiny(conditioner=None) -> DenoiserConfig:
    hydra = {"name": "hydra", "d_state": 4, "headdim": 4, "expand": 2, "ngroups": 1, "chunk_size": 4}
    layout = [{"mixer": hydra}, {"mixer": {"name": "attention", "num_heads": 2}}]
    return DenoiserConfig(dim=8, patch_size=2, in_channels=1, mlp_ratio=2.0, layout=layout, conditioner=conditioner)


def test_flops_match_hand_count():
    # L = 8 tokens, D = 8; Hydra E = 16, H = 4, P = 4, G = 1, N = 4, Q = 4; MLP hidden 16; 4 values per patch
    patches = 2 * 8 * 4 * 8 + 2 * 8 * 8 * 4
    projections = 2 * 8 * 8 * (32 + 16 + 8) + 2 * 8 * 16 * 4 + 2 * 8 * 16 * 8  # in_proj, fc_D, out_proj
    hydra = projections + 2 * (2 * 8 * 4 * 4 + 2 * 8 * 4 * 16 + 4 * 8 * 4 * 16)  # two SSD scans
    attention = 2 * 8 * 8 * 24 + 2 * 8 * 8 * 8 + 4 * 8 * 8 * 8
    mlp = 2 * (2 * 2 * 8 * 8 * 16)
    assert model_flops_per_sample(_tiny(), (1, 2, 4)) == patches + hydra + attention + mlp == 32256
    # cross-attention to S = 3 context tokens of width 6, in both blocks
    text = {"name": "text_embedding", "context_dim": 6}
    cross = 2 * (2 * 2 * 8 * 8 * 8 + 2 * 3 * 6 * 16 + 4 * 8 * 3 * 8)
    assert model_flops_per_sample(_tiny(text), (1, 2, 4), context_tokens=3) == 32256 + cross


def test_flops_of_an_unset_chunk_count_the_triton_chunk():
    """``chunk_size: null`` counts Q = 128 (what runs on a GPU): the scan term grows with Q up to L."""
    from hthlight.mixers.hydra import HydraMixer

    unset = HydraMixer(64, d_state=16, headdim=16)
    assert unset.chunk_size is None
    assert mixer_flops(unset, 4096) == mixer_flops(HydraMixer(64, d_state=16, headdim=16, chunk_size=128), 4096)
    assert mixer_flops(unset, 4096) < mixer_flops(HydraMixer(64, d_state=16, headdim=16, chunk_size=256), 4096)


def test_transformer_twin_replaces_every_mixer_keeps_the_rest():
    config = presets.config("hth-s")
    twin = transformer_twin(config)
    mixers = expand_layout(twin.layout)
    assert len(mixers) == len(expand_layout(config.layout)) == 33
    assert all(m["name"] == "attention" and m["num_heads"] == 6 and "scan" not in m for m in mixers)
    assert (twin.dim, twin.patch_size, twin.mlp_ratio, twin.conditioner) == (
        config.dim,
        config.patch_size,
        config.mlp_ratio,
        config.conditioner,
    )
    Denoiser(transformer_twin(_tiny()))  # builds


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--presets", "hth-s", "nope", "--grids", "4x4"], "unknown preset 'nope'"),
        (["sample", "--preset", "hth-s", "--grid-unit", "latent", "--grids", "9x9"], "not divisible by the patch"),
        (["sample", "--grids", "4xx"], "must be HxW or TxHxW"),
        (["sample", "--steps", "0"], "--steps must be positive"),
        (["sample", "--timed-steps", "0"], "--timed-steps must be positive"),
        (["sideways"], "invalid choice"),
        (["train", "--presets", "dim-s/2", "--grids", "4x4"], "no FLOP formula for mixer"),
        (["train", "--presets", "dit-s/2", "--override", "dim=64"], "not divisible by num_heads=6"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_mamba_ssm_triton_helper_copies_sources_with_an_import_free_init(tmp_path):
    """benchmarks/mamba_ssm_triton.py: the package imports without its CUDA extension."""
    import importlib.util
    import io
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    files = {
        "mamba_ssm-9.9/setup.py": "",
        "mamba_ssm-9.9/mamba_ssm/__init__.py": '__version__ = "9.9"\nimport selective_scan_cuda\n',
        "mamba_ssm-9.9/mamba_ssm/ops/triton/ssd_combined.py": "def mamba_chunk_scan_combined():\n    return 42\n",
        "mamba_ssm-9.9/mamba_ssm/csrc/kernel.cu": "// not copied",
    }
    sdist = tmp_path / "mamba_ssm-9.9.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mamba_ssm_triton.py"
    site = tmp_path / "site"
    subprocess.run([sys.executable, str(script), str(sdist), "--target", str(site)], check=True)
    check = (
        "import mamba_ssm; from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as f; "
        "print(mamba_ssm.__version__, f())"
    )
    out = subprocess.run([sys.executable, "-c", check], env={"PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert out.stdout.split() == ["9.9", "42"], out.stderr
    assert not (site / "mamba_ssm" / "csrc").exists()
    assert importlib.util.find_spec("selective_scan_cuda") is None  # the import that was removed cannot work here
