"""Stage 3, training: heads trained from the feature cache, in seconds.

Owns: the head configuration (``config``), patient-level splits and their audit (``splits``), the random
streams (``streams``), the stacked engine and its optimiser (``engine``, ``optim``), train-head and sweep,
the sklearn metrics (``metrics``) and the linear-probe baseline (``probe``).
May import: ``fastall.features.cache`` (the cache reader), ``fastall.data``, the shared contracts and
``fastall.system``. Never imports the backbone, augmentation, torchvision, inference or the CLI.
"""
