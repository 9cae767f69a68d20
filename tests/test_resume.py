"""Exact resume: N steps straight == N/2 steps, stop mid-epoch, resume from the checkpoint to N."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import TINY_ATTENTION, TINY_HYDRA
from lightning.pytorch.callbacks import ModelCheckpoint

from hthlight.callbacks.resume import ExactResume, step_seed
from hthlight.data import DigitsDataModule
from hthlight.data.resumable import ResumableSampler
from hthlight.module import DiffusionModule

STEPS = 4
BATCH = 16
EPOCH = 3  # batches per epoch (limit_train_batches): the stop (step 2) is mid-epoch, the run crosses an epoch end


def tiny_module(**kwargs) -> DiffusionModule:
    denoiser = {
        "in_channels": 1,
        "patch_size": 2,
        "dim": 32,
        "layout": [{"mixer": TINY_HYDRA}, {"mixer": TINY_ATTENTION}],
        "conditioner": {"name": "class_label", "num_classes": 10, "dropout": 0.2},
    }
    options = {
        "optimizer": {"lr": 3e-3, "weight_decay": 0.01, "warmup_steps": 2, "schedule": "cosine"},
        "ema": {"decay": 0.9},
        "sampling": {"steps": 2, "cfg_scale": 1.0},
        "image_size": 8,
    }
    options.update(kwargs)
    return DiffusionModule(denoiser=denoiser, **options)


def digits(batch_size: int = BATCH) -> DigitsDataModule:
    return DigitsDataModule(image_size=8, batch_size=batch_size)


def trainer(root, max_steps=STEPS, callbacks=(), **kwargs) -> L.Trainer:
    options = {
        "max_steps": max_steps,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        "limit_train_batches": EPOCH,
        "default_root_dir": str(root),
    }
    options.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), **options)


class StopAt(L.Callback):
    """Simulates an interruption: ends the run after ``step`` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def state_of(module: DiffusionModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_states_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    worst = max((x.float() - b[k].float()).abs().max().item() for k, x in a.items())
    assert worst <= atol, f"largest difference {worst}"


def test_interrupted_run_resumes_exactly(tmp_path):
    L.seed_everything(0)
    straight = tiny_module()
    trainer(tmp_path / "straight").fit(straight, datamodule=digits())

    L.seed_everything(0)
    first = tiny_module()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=STEPS // 2, save_top_k=-1)
    trainer(tmp_path / "a", callbacks=[ckpt, StopAt(STEPS // 2)]).fit(first, datamodule=digits())
    path = tmp_path / "ckpt" / f"epoch=0-step={STEPS // 2}.ckpt"
    assert path.is_file()

    L.seed_everything(123)  # the resumed process need not share the first one's global RNG state
    resumed = tiny_module()
    t = trainer(tmp_path / "b")
    t.fit(resumed, datamodule=digits(), ckpt_path=path)
    assert t.global_step == STEPS
    assert_states_close(state_of(resumed), state_of(straight))
    assert any(k.startswith("ema_denoiser.") for k in state_of(resumed))  # the EMA is compared too
    # and the comparison is not vacuous: training moved the weights
    assert not torch.allclose(
        state_of(resumed)["denoiser.final.linear.weight"], state_of(first)["denoiser.final.linear.weight"]
    )


def test_resumable_sampler_splits_and_resumes():
    data = list(range(23))
    full = [ResumableSampler(data, seed=5, num_replicas=2, rank=r) for r in range(2)]
    for s in full:
        s.set_epoch(3)
    orders = [list(s) for s in full]
    assert len(orders[0]) == len(orders[1]) == 12
    assert set(orders[0]) | set(orders[1]) == set(data)  # no gaps (one index repeats as padding)
    resumed = ResumableSampler(data, seed=0, num_replicas=2, rank=1)
    resumed.load_state_dict({**full[1].state_dict(), "samples_consumed": 5})
    resumed.set_epoch(3)  # Lightning sets the same epoch again after loading: the position stays
    assert list(resumed) == orders[1][5:]
    assert list(resumed) == orders[1]  # the offset applies once
    resumed.set_epoch(4)
    assert list(resumed) != orders[1]


def test_resumable_sampler_splits_by_batches_like_accumulation():
    data = list(range(40))
    one = ResumableSampler(data, seed=1, batch_size=4, num_replicas=1, rank=0)
    two = [ResumableSampler(data, seed=1, batch_size=4, num_replicas=2, rank=r) for r in range(2)]
    blocks = [list(one)[i : i + 4] for i in range(0, 40, 4)]
    ranks = [list(s) for s in two]
    for step in range(5):  # step k: rank r's batch == micro-batch r of 2 accumulated on one rank
        for r in range(2):
            assert ranks[r][4 * step : 4 * step + 4] == blocks[2 * step + r]


def test_step_seed_differs_by_step_and_rank():
    seeds = {step_seed(0, b, r) for b in range(50) for r in range(4)}
    assert len(seeds) == 200
    assert step_seed(1, 0, 0) != step_seed(0, 0, 0)


def test_module_adds_exact_resume():
    assert any(isinstance(cb, ExactResume) for cb in tiny_module().configure_callbacks())


@pytest.mark.parametrize("batch_size", [BATCH])
def test_checkpoint_records_data_position(tmp_path, batch_size):
    module = tiny_module()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    trainer(tmp_path, max_steps=3, callbacks=[ckpt]).fit(module, datamodule=digits(batch_size))
    state = torch.load(tmp_path / "epoch=0-step=3.ckpt", weights_only=True)
    (resume_state,) = [v for k, v in state["callbacks"].items() if k.startswith("ExactResume")]
    assert resume_state["batches_consumed"] == 3
    assert resume_state["samplers"][0]["epoch"] == 0
