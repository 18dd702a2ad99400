"""Stage 1, data: finding labelled images (C-NMC and class-folder layouts), decoding them, synthetic sets.

Owns: discovery and patient IDs (``discover``, with what it found in ``records``), the one directory walker
(``walk``), the one decode+resize dataset (``loader``), image decoding (``images``), the synthetic C-NMC and
K-class trees (``synth``) and their drawn cells (``cells``).
May import: the shared contracts (``fastall.errors``, ``fastall.preprocess``) and ``fastall.system``.
Never imports training, inference, features or the CLI.
"""
