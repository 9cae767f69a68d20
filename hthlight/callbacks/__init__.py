"""Lightning callbacks: sample grids, prediction writing, data-health reports."""

from hthlight.callbacks.prediction_writer import PredictionWriter
from hthlight.callbacks.sample_grid import SampleGridLogger
from hthlight.callbacks.skipped import SkippedSamplesReporter

__all__ = ["PredictionWriter", "SampleGridLogger", "SkippedSamplesReporter"]
