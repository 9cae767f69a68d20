"""hthlight plugin: extra flow-matching schedulers (registry kind ``scheduler``).

Installing the package registers ``cosine_flow`` (:class:`CosineFlow`, the trigonometric
variance-preserving interpolant) under the ``hthlight.schedulers`` entry-point group.
"""

from hthlight_flowschedules.cosine_flow import CosineFlow

__all__ = ["CosineFlow"]
__version__ = "0.1.0"
