"""``raunet-fast reproduce``: the paper's comparison (Table 1, Fig. 5, Fig. 6) rerun on
this machine: U-Net, Attention U-Net (ResUNet) and RA-U-Net trained alike over several
seeds, scored on the test split, compared per case (docs/reproduce.md).

* :mod:`.runs` - one training + evaluation per model and seed, resumable; size and speed;
* :mod:`.stats` - mean ± std over seeds, paired bootstrap and Wilcoxon comparisons;
* :mod:`.cases` - test cases as pictures (inputs, truths, predictions, attention maps);
* :mod:`.figures` - the figures (matplotlib, the ``plots`` extra);
* :mod:`.report` - the tables and ``report.md``.
"""
from .pipeline import reproduce

__all__ = ["reproduce"]
