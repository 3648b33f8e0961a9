"""Deprecated: training moved to :mod:`raunet_fast.engine` (Trainer), the configuration to
:mod:`raunet_fast.config` and checkpoint I/O to :mod:`raunet_fast.io`. These names stay
importable from here for one release."""
from __future__ import annotations

import warnings

from .config import TrainConfig
from .engine.device import autocast_dtype, resolve_device
from .engine.resume import FIXED, check_same_run, resume_point
from .engine.trainer import LOG_FIELDS, Trainer, train
from .engine.training import (build_datasets, case_ids, patch_context, preprocessing_info,
                              validate)
from .io.checkpoints import (CHECKPOINT_NAME, PREPROCESSING_NAME, STATE_NAME, checkpoint_ok,
                             checkpoint_problems, load_training_state, recover_checkpoint,
                             write_checkpoint)
from .io.tables import read_csv as read_log

warnings.warn("raunet_fast.train is deprecated: use raunet_fast.engine (Trainer, train), "
              "raunet_fast.config (TrainConfig) and raunet_fast.io", DeprecationWarning,
              stacklevel=2)

__all__ = ["TrainConfig", "Trainer", "train", "autocast_dtype", "resolve_device", "FIXED",
           "check_same_run", "resume_point", "LOG_FIELDS", "build_datasets", "case_ids",
           "patch_context", "preprocessing_info", "validate", "CHECKPOINT_NAME",
           "PREPROCESSING_NAME", "STATE_NAME", "checkpoint_ok", "checkpoint_problems",
           "load_training_state", "recover_checkpoint", "write_checkpoint", "read_log"]
