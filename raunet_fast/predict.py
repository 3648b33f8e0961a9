"""Deprecated: prediction moved to :mod:`raunet_fast.engine` (PredictionRun, predict) and
image I/O to :mod:`raunet_fast.io`. These names stay importable from here for one release."""
from __future__ import annotations

import warnings

from .engine.prediction import BRATS_SUFFIX, PredictionRun, predict
from .io.images import GRAY_MODES, MASK_SUFFIX, PROB_SUFFIX, check_image, list_images

warnings.warn("raunet_fast.predict is deprecated: use raunet_fast.engine (PredictionRun, "
              "predict) and raunet_fast.io", DeprecationWarning, stacklevel=2)

__all__ = ["BRATS_SUFFIX", "PredictionRun", "predict", "GRAY_MODES", "MASK_SUFFIX",
           "PROB_SUFFIX", "check_image", "list_images"]
