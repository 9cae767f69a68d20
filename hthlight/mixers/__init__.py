"""Token mixers: ``forward(x_BLD, grid=(t, h, w)) -> y_BLD`` in canonical token order.

Modules are imported on demand by the registry; import the classes from their modules, e.g.
``from hthlight.mixers.hydra import HydraMixer``.
"""

from hthlight.mixers.base import ScanningMixer, TokenMixer

__all__ = ["ScanningMixer", "TokenMixer"]
