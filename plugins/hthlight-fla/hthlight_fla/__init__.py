"""hthlight plugin: the ``bi_gla`` token mixer on flash-linear-attention's GLA kernels."""

from hthlight_fla.mixer import BiGLAMixer, gla_reference

__all__ = ["BiGLAMixer", "gla_reference"]
