"""``python -m raunet_fast.cli`` (e.g. under ``torchrun``): the ``raunet-fast`` command."""
import sys

from . import main

sys.exit(main())
