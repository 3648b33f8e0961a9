"""Deprecated: evaluation moved to :mod:`raunet_fast.engine` (Evaluator, evaluate) and
checkpoint / NIfTI I/O to :mod:`raunet_fast.io`. These names stay importable from here for
one release."""
from __future__ import annotations

import warnings

from .engine.evaluator import METRICS, Evaluator, evaluate, format_summary
from .engine.predictor import ENSEMBLE_KEYS, Predictor, build_forward, load_ensemble
from .io.checkpoints import check_checkpoint_folder, read_preprocessing
from .io.nifti import write_labels as write_brats_labels

warnings.warn("raunet_fast.evaluate is deprecated: use raunet_fast.engine (Evaluator, "
              "evaluate, Predictor) and raunet_fast.io", DeprecationWarning, stacklevel=2)

__all__ = ["METRICS", "Evaluator", "evaluate", "format_summary", "ENSEMBLE_KEYS", "Predictor",
           "build_forward", "load_ensemble", "check_checkpoint_folder", "read_preprocessing",
           "write_brats_labels"]
