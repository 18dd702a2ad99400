"""Stage 3, training: heads trained from the feature cache, in seconds.

Owns: the head configuration and run options (``config``; hyperparameters declared once, ``hparams``), the
sweep grid (``grid``), patient-level splits and their audit (``splits``), the random streams (``streams``),
the stacked engine (``engine``: ``layout``, ``batch``, ``stacked``, ``optim``, ``validation``, ``results``),
train-head and its run files (``train_head``, ``run_outputs``), sweep, and the sklearn metrics (``metrics``),
and the linear-probe baseline (``probe``).
May import: ``fastall.features.cache`` (the cache reader), ``fastall.data``, the shared contracts and
``fastall.system``. Never imports the backbone, augmentation, torchvision, inference or the CLI.
"""
