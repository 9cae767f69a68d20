"""The ``hthlight`` command: LightningCLI subcommands plus ``components`` and ``eval``.

``hthlight fit|validate|test|predict --config CONFIG.yaml`` train and sample;
``hthlight components [KIND]`` lists registered components with their source and status;
``hthlight eval digits PRED_DIR`` scores digit samples with a classifier of real digits.
Errors caused by the configuration or the input end the command with one line on stderr
and exit status 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from hthlight.errors import HthlightError

USAGE_EXTRA = """
extra commands:
  components [KIND]      list registered components (kind, name, source, status)
  eval digits PRED_DIR   classify predicted digits with a classifier of the real digits
  eval fid SAMPLES_DIR REF_DIR --features PATH   FID + KID with a local Inception (docs/sampling.md)
  eval clip SAMPLES_DIR --model LOCAL_CLIP_DIR   CLIP score of prompted samples (docs/sampling.md)
  eval fvd SAMPLES_DIR REF_DIR --i3d PATH.pt     FVD, StyleGAN-V protocol (docs/sampling.md)
  data moving-digits --out DIR   write the moving-digits MP4 clips and their manifest (docs/video.md)
  adapt-video IMAGE_CKPT OUT_CKPT [--num-frames T]   image checkpoint -> video model (HTH sec. 3.3)
  text-encoder {tiny-t5,tiny-clip} --out DIR [--seed N]   save a tiny random text encoder (docs/text_to_image.md)
  cache --config CONFIG --output DIR   encode a data set once into VAE latents + text features (docs/data.md)
  export CKPT OUT_DIR [--raw]   denoiser (EMA weights) as safetensors + resolved config (docs/scale_out.md)
  bench {sample,train} [--preset P] [--grids 64x64 ...]   denoiser speed, HTH vs Transformer, MFU (docs/benchmarks.md)
"""


def components_table(kind: str | None = None) -> list[tuple[str, str, str, str]]:
    """Rows ``(kind, name, source, status)``; every component is imported to report its status."""
    from hthlight.registry import KINDS, ComponentLoadError, registry

    kinds = [kind] if kind else list(KINDS)
    rows = []
    for k in kinds:
        for entry in registry(k).entries():
            with contextlib.suppress(ComponentLoadError):
                entry.load()
            rows.append((k, entry.name, entry.source, "ok" if entry.error is None else f"failed: {entry.error}"))
    return rows


def print_components(argv: Sequence[str]) -> int:
    from hthlight.registry import KINDS, plugins_enabled

    if len(argv) > 1 or (argv and argv[0] not in KINDS):
        raise HthlightError(f"usage: hthlight components [KIND]; KIND is one of: {', '.join(KINDS)}")
    rows = components_table(argv[0] if argv else None)
    header = ("KIND", "NAME", "SOURCE", "STATUS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    if not plugins_enabled():
        print("(plugin discovery is disabled by HTHLIGHT_NO_PLUGINS)")
    return 1 if any(r[3].startswith("failed") for r in rows) else 0


def eval_digits(argv: Sequence[str]) -> int:
    from hthlight.eval import digits

    return digits.main(list(argv))


#: ``hthlight eval NAME ...`` -> handler(argv) returning the exit status
def eval_module(name: str):
    """Handler running ``hthlight.eval.<name>.main(argv)``, imported on use."""

    def handler(argv: Sequence[str]) -> int:
        import importlib

        return importlib.import_module(f"hthlight.eval.{name}").main(list(argv))

    return handler


EVALUATIONS = {
    "digits": eval_digits,
    "fid": eval_module("fid"),
    "clip": eval_module("clip_score"),
    "fvd": eval_module("fvd"),
}


def run_eval(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in EVALUATIONS:
        raise HthlightError(f"usage: hthlight eval {{{','.join(EVALUATIONS)}}} ...")
    return EVALUATIONS[argv[0]](argv[1:])


#: ``hthlight NAME ...`` commands beside LightningCLI's -> handler(argv) returning the exit status
EXTRA_COMMANDS = {
    "components": print_components,
    "eval": run_eval,
    "data": lambda argv: _lazy_command("hthlight.data.moving_digits:data_command", argv),
    "adapt-video": lambda argv: _lazy_command("hthlight.adapt:main", argv),
    "text-encoder": lambda argv: _lazy_command("hthlight.conditioning.text_encoders:text_encoder_command", argv),
    "cache": lambda argv: _lazy_command("hthlight.data.feature_cache:cache_command", argv),
    "export": lambda argv: _lazy_command("hthlight.export:main", argv),
    "bench": lambda argv: _lazy_command("hthlight.bench:main", argv),
}


def _lazy_command(target: str, argv: Sequence[str]) -> int:
    """Import a command's module only when it runs (some need an extra: `video`, `hf`)."""
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(list(argv))


def run_lightning(argv: Sequence[str] | None) -> None:
    """Run LightningCLI on ``argv`` (None: on ``sys.argv``, as a console script does)."""
    from hthlight.lightning_cli import HthlightCLI

    HthlightCLI(args=None if argv is None else list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            return EXTRA_COMMANDS[argv[0]](argv[1:])
        if not argv:
            argv, from_command_line = ["--help"], False
        run_lightning(None if from_command_line else argv)
        return 0
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None or os.environ.get("HTHLIGHT_DEBUG"):
            raise
        print(f"hthlight: error: {user_error}", file=sys.stderr)
        return 2


def find_user_error(exc: BaseException | None) -> HthlightError | None:
    """The :class:`HthlightError` behind ``exc``, also when a library re-raised it wrapped."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, HthlightError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def entry_point() -> None:
    sys.exit(main())
