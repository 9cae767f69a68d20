"""Image data modules and sampling requests."""

from hthlight.data.captions import CaptionDataModule
from hthlight.data.digits import DigitsDataModule
from hthlight.data.feature_cache import CachedFeaturesDataModule
from hthlight.data.image_folder import ImageFolderDataModule
from hthlight.data.mixed import MixedDataModule
from hthlight.data.prompts import PromptDataModule, PromptRequests
from hthlight.data.requests import SamplingRequests
from hthlight.data.sampling import SamplingDataModule
from hthlight.data.video import VideoDataModule

__all__ = [
    "CachedFeaturesDataModule",
    "CaptionDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MixedDataModule",
    "PromptDataModule",
    "PromptRequests",
    "SamplingDataModule",
    "SamplingRequests",
    "VideoDataModule",
]
