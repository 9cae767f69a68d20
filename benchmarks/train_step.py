"""Training throughput (samples/s, tokens/s) and model FLOP utilisation of denoiser presets.

Same as ``hthlight bench train [options]``; see docs/benchmarks.md. Example (one H100)::

    python benchmarks/train_step.py --presets hth-xl dit-xl/2 --grids 32x32 64x64 128x128 --out train_h100.json
"""

import sys

from hthlight.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
