"""hthlight plugin: ZigMa-style zigzag scan orders (registry kind ``scan``).

Installing the package registers ``zigzag_0`` .. ``zigzag_7`` (frame by frame) and
``zigzag_st_0`` .. ``zigzag_st_7`` (time fastest) under the ``hthlight.scans`` entry-point
group; see :mod:`hthlight_zigzag.scans` for the exact paths.
"""

from hthlight_zigzag.scans import NUM_PATHS, TEMPORAL_MODES, ZigzagScan, zigzag_path

__all__ = ["NUM_PATHS", "TEMPORAL_MODES", "ZigzagScan", "zigzag_path"]
__version__ = "0.1.0"
