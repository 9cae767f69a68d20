"""Strategies: configs compose with a model config, blocks are the FSDP/checkpointing units, FSDP on 2 GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_HYDRA
from test_resume import tiny_module

from hthlight.models.blocks import DenoiserBlock
from hthlight.models.denoiser import Denoiser
from hthlight.strategies import (
    GRIDS_PER_BLOCK_KIND,
    BlockDDPStrategy,
    BlockFSDPStrategy,
    apply_block_options,
    clean_name,
    compiled,
    is_checkpoint_unit,
    is_fsdp_unit,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "kind", "sharding"),
    [
        ("ddp", BlockDDPStrategy, None),
        ("fsdp", BlockFSDPStrategy, "FULL_SHARD"),
        ("fsdp_hybrid", BlockFSDPStrategy, "HYBRID_SHARD"),
    ],
)
def test_strategy_configs_compose_with_a_model_config(tmp_path, name, kind, sharding):
    from hthlight.lightning_cli import HthlightCLI

    cli = HthlightCLI(
        args=[
            "--config", "configs/digits.yaml", "--config", f"configs/strategies/{name}.yaml",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
        ],
        run=False,
    )  # fmt: skip
    strategy = cli.trainer.strategy
    assert isinstance(strategy, kind)
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.model.denoiser_config.dim == 128  # the model config is kept
    if sharding:
        assert strategy.sharding_strategy.name == sharding
        assert strategy.kwargs["auto_wrap_policy"] is not None
        assert strategy._activation_checkpointing_kwargs  # each block is checkpointed


def test_units_are_declared_on_the_block_class_so_any_mixer_inherits_them():
    block = DenoiserBlock(16, {"class_path": "torch.nn.Identity"})  # any mixer, e.g. a plugin's
    assert is_fsdp_unit(block) and is_checkpoint_unit(block)
    assert not is_fsdp_unit(block.mixer) and not is_checkpoint_unit(block.mixer)
    with torch.device("meta"):
        denoiser = Denoiser({"in_channels": 1, "dim": 16, "layout": [{"mixer": TINY_HYDRA}]})
    assert is_fsdp_unit(denoiser) and not is_checkpoint_unit(denoiser)  # EMA and model shard alike


def test_activation_checkpointing_keeps_names_and_gradients():
    reference, wrapped = tiny_module(), tiny_module()
    for m in (reference, wrapped):
        m.configure_model()
    wrapped.load_state_dict(reference.state_dict())
    apply_block_options(wrapped, activation_checkpointing=True)
    assert "_checkpoint_wrapped_module" in "".join(n for n, _ in wrapped.denoiser.named_modules())
    assert wrapped.state_dict().keys() == reference.state_dict().keys()
    x, t, batch = torch.randn(2, 1, 8, 8), torch.rand(2), {"label": torch.tensor([1, 2])}
    for m in (reference, wrapped):
        m.denoiser(x, t, batch).square().mean().backward()
    for (name, a), b in zip(reference.denoiser.named_parameters(), wrapped.denoiser.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6, msg=name)


def test_compile_option_compiles_each_block_in_place():
    module = tiny_module()
    module.configure_model()
    with torch._dynamo.config.patch(recompile_limit=8):
        apply_block_options(module, compile=True)
        # one Hydra and one attention kind of block: room for 8 grids each in the shared code's cache
        assert torch._dynamo.config.recompile_limit == 2 * GRIDS_PER_BLOCK_KIND
    assert all(compiled(block) for block in module.denoiser.blocks)
    assert all(compiled(block) for block in module.ema_denoiser.blocks)


def test_weight_decay_groups_do_not_depend_on_wrapping():
    module = tiny_module(optimizer={"weight_decay": 0.1})
    module.configure_model()
    apply_block_options(module, activation_checkpointing=True)  # names gain _checkpoint_wrapped_module
    optimizer = module.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.denoiser.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(names[id(p)].endswith("A_log") for p in no_decay["params"])
    assert (
        clean_name("blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.fc1.weight")
        == "blocks.0.mlp.fc1.weight"
    )


# ------------------------------------------------------------------ GPU: FSDP on 2 GPUs
FSDP_SCRIPT = """
import faulthandler, json, sys
faulthandler.dump_traceback_later(200, exit=True)  # a hung collective prints every thread's stack
sys.path.insert(0, {tests!r})
import lightning as L, torch
from test_resume import digits, tiny_module, trainer
from test_ddp_cpu import LossRecorder
from hthlight.callbacks import SampleGridLogger
from hthlight.strategies import BlockFSDPStrategy

torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
mode, out = sys.argv[1], sys.argv[2]
L.seed_everything(0)
module, recorder = tiny_module(), LossRecorder()
options = dict(accelerator="gpu", max_steps=6, limit_train_batches=None, callbacks=[recorder])
if mode == "fsdp":
    options.update(devices=2, strategy=BlockFSDPStrategy(), enable_checkpointing=True)
    options["callbacks"].append(SampleGridLogger(every_n_steps=3, samples_per_class=1, steps=2))
else:
    options.update(devices=1, accumulate_grad_batches=2)
t = trainer(out, **options)
t.fit(module, datamodule=digits(8))
t.save_checkpoint(out + "/final.ckpt")  # FSDP gathers the full state (model and EMA) for saving
if t.is_global_zero:
    json.dump(recorder.losses, open(out + "/losses.json", "w"))
"""


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_fsdp_two_gpus_matches_one_gpu_with_same_global_batch(tmp_path):
    script = tmp_path / "fsdp.py"
    script.write_text(textwrap.dedent(FSDP_SCRIPT.format(tests=str(REPO / "tests"))))
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0"}
    for mode in ("single", "fsdp"):
        try:  # a hang in a collective must fail the test, not stall the suite
            done = subprocess.run(
                [sys.executable, str(script), mode, str(tmp_path / mode)],
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{mode} run did not finish in 240 s: {(exc.stderr or b'')[-4000:]!r}")
        assert done.returncode == 0, done.stderr[-4000:]
    losses = {m: json.loads((tmp_path / m / "losses.json").read_text()) for m in ("single", "fsdp")}
    assert len(losses["fsdp"]) == 6
    for a, b in zip(losses["single"], losses["fsdp"]):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), losses  # fp32, TF32 off: reduction order only
    states = {m: torch.load(tmp_path / m / "final.ckpt", weights_only=True)["state_dict"] for m in ("single", "fsdp")}
    assert states["single"].keys() == states["fsdp"].keys()
    for key, value in states["single"].items():  # the shard-local EMA equals the unsharded one
        torch.testing.assert_close(states["fsdp"][key].cpu(), value.cpu(), rtol=0, atol=1e-4, msg=key)
    assert list((tmp_path / "fsdp").rglob("step_*.png"))  # sampling ran on every rank, written by rank 0


def test_compiled_scanning_blocks_are_one_graph_and_match_eager():
    """Scan indices and the identity test are traced, not graph breaks; every scan order stays exact."""
    scans = ["h", "v", "th", "tv"]
    hydra = {"name": "hydra", "d_state": 16, "headdim": 16, "chunk_size": 32}
    layout = [{"mixer": hydra, "scans": scans, "repeat": len(scans)}, {"mixer": {"name": "attention", "num_heads": 2}}]
    torch.manual_seed(0)
    denoiser = Denoiser({"in_channels": 1, "dim": 32, "layout": layout})
    c_BD = torch.randn(2, 32)
    for block in denoiser.blocks:
        torch._dynamo.reset()
        traced = torch.compile(block, backend="eager", fullgraph=True)  # fullgraph: a break is an error
        for grid in [(2, 4, 8), (1, 8, 4), (1, 1, 16)]:  # the last grid: h and v scans are the identity
            x_BLD = torch.randn(2, grid[0] * grid[1] * grid[2], 32)
            torch.testing.assert_close(traced(x_BLD, grid, c_BD=c_BD), block(x_BLD, grid, c_BD=c_BD), rtol=0, atol=1e-6)
