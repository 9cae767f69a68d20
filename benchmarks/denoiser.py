"""Sampling wall time of an HTH preset vs its equal-size Transformer (HTH fig. 5).

Same as ``hthlight bench sample [options]``; see docs/benchmarks.md. Example (one H100)::

    python benchmarks/denoiser.py --preset hth-xl --out denoiser_h100.json --plot denoiser_h100.png
"""

import sys

from hthlight.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "sample", *sys.argv[1:]]))
