"""Image data modules and sampling requests."""

from hthlight.data.digits import DigitsDataModule
from hthlight.data.image_folder import ImageFolderDataModule
from hthlight.data.requests import SamplingRequests
from hthlight.data.sampling import SamplingDataModule

__all__ = ["DigitsDataModule", "ImageFolderDataModule", "SamplingDataModule", "SamplingRequests"]
