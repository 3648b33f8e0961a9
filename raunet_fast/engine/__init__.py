"""The engine: what the commands run, as classes a user can drive or subclass.

* :class:`Trainer` - one training run (setup, train_epoch, validate, on_epoch_end, save);
* :class:`Predictor` - a checkpoint (+ ensemble, TTA, fused, dtype, windows) turned into
  logits and label maps, shared by prediction and evaluation;
* :class:`Evaluator` - a Predictor plus metrics over a data split;
* :class:`PredictionRun` - masks for new images or BraTS cases, written to a folder.

Each is configured by a dataclass of :mod:`raunet_fast.config`.
"""
from .evaluator import Evaluator, evaluate, format_summary
from .prediction import PredictionRun, predict
from .predictor import Predictor, build_forward, load_ensemble
from .trainer import Trainer, train

__all__ = ["Trainer", "train", "Predictor", "build_forward", "load_ensemble", "Evaluator",
           "evaluate", "format_summary", "PredictionRun", "predict"]
