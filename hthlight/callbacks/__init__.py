"""Lightning callbacks: sample grids, prediction writing, data-health reports."""

from hthlight.callbacks.prediction_writer import PredictionWriter
from hthlight.callbacks.sample_grid import SampleGridLogger

__all__ = ["PredictionWriter", "SampleGridLogger"]
