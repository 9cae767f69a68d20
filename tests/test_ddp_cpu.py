"""DDP with 2 CPU processes (gloo) trains like one process with the same global batch; predict splits cleanly.

Global batch 16 = 2 ranks x 8 versus 1 rank x 2 accumulated micro-batches of 8: the resumable
sampler gives step k the same samples and ExactResume the same noise/timesteps/dropout, so
per-step losses and final weights agree up to float32 reduction order (tolerance 1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import torch
from test_resume import digits, tiny_module, trainer

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
TOLERANCE = 1e-5

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import lightning as L, torch
from test_resume import digits, tiny_module, trainer
from test_ddp_cpu import LossRecorder, STEPS
from hthlight.callbacks import PredictionWriter, SampleGridLogger

out = sys.argv[1]
L.seed_everything(0)
module, recorder = tiny_module(), LossRecorder()
grids = SampleGridLogger(every_n_steps=2, samples_per_class=1, steps=2)  # samples on every rank, rank 0 writes
t = trainer(out, max_steps=STEPS, strategy="ddp", devices=2, callbacks=[recorder, grids], limit_train_batches=None)
t.fit(module, datamodule=digits(8))
data = digits(8)
data.requests.samples_per_class, data.predict_batch_size = 1, 2  # 10 requests over 2 ranks, odd batches
t = trainer(out, strategy="ddp", devices=2, callbacks=[PredictionWriter(out + "/pred", overwrite=True)])
t.predict(module, datamodule=data)
if t.is_global_zero:
    torch.save({{k: v.detach().clone() for k, v in module.state_dict().items()}}, out + "/state.pt")
    json.dump(recorder.losses, open(out + "/losses.json", "w"))
"""


class LossRecorder(L.Callback):
    """Loss of each optimizer step, averaged over ranks and accumulated micro-batches."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self._micro: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self._micro.append(float(loss) * trainer.accumulate_grad_batches)  # Lightning reports loss / accumulation
        if len(self._micro) == trainer.accumulate_grad_batches:
            self.losses.append(sum(self._micro) / len(self._micro))
            self._micro = []


def test_ddp_two_cpu_processes_match_one_process_with_same_global_batch(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(REPO / "tests"))))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PL_DISABLE_FORK": "1"}
    ddp = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    L.seed_everything(0)
    single, recorder = tiny_module(), LossRecorder()
    trainer(
        tmp_path / "single", max_steps=STEPS, accumulate_grad_batches=2, callbacks=[recorder], limit_train_batches=None
    ).fit(single, datamodule=digits(8))

    output, _ = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, output[-3000:]
    ddp_losses = json.loads((tmp_path / "losses.json").read_text())
    assert len(ddp_losses) == len(recorder.losses) == STEPS
    for a, b in zip(ddp_losses, recorder.losses):
        assert abs(a - b) <= TOLERANCE * max(1.0, abs(b)), (ddp_losses, recorder.losses)
    ddp_state = torch.load(tmp_path / "state.pt", weights_only=True)
    single_state = single.state_dict()
    worst = max((ddp_state[k] - v).abs().max().item() for k, v in single_state.items())
    assert worst <= TOLERANCE, worst
    moved = (ddp_state["denoiser.final.linear.weight"] != 0).any()  # zero-initialised: training moved it
    assert moved
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000002.png", "step_0000003.png"]

    # predict: every request exactly once across the two ranks (no duplicates, no gaps)
    lines = (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()
    indices = sorted(json.loads(line)["index"] for line in lines)
    assert indices == list(range(10))  # one sample per class: index == label
