"""hthlight: Lightning framework for diffusion models mixing Hydra state-space mixers with attention."""

from hthlight.errors import ConfigError, DataError, HthlightError
from hthlight.registry import available, build, register, registry

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "HthlightError", "__version__", "available", "build", "register", "registry"]
