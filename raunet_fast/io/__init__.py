"""Reading and writing: checkpoint folders, images, NIfTI volumes, CSV tables.

Each check on a file lives here once; the engine and the CLI call these functions.
"""
from .checkpoints import (CHECKPOINT_NAME, PREPROCESSING_NAME, STATE_NAME, check_checkpoint_folder,
                          checkpoint_ok, checkpoint_problems, load_training_state,
                          read_preprocessing, recover_checkpoint, write_checkpoint)
from .images import check_image, list_images, png_bytes
from .nifti import write_labels
from .tables import read_csv, write_csv

__all__ = ["CHECKPOINT_NAME", "PREPROCESSING_NAME", "STATE_NAME", "check_checkpoint_folder",
           "checkpoint_ok", "checkpoint_problems", "load_training_state", "read_preprocessing",
           "recover_checkpoint", "write_checkpoint", "check_image", "list_images", "png_bytes",
           "write_labels", "read_csv", "write_csv"]
