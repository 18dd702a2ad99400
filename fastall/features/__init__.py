"""Stage 2, features: the frozen backbone run once over augmented views, into the HDF5 feature cache.

Owns: augmentation and its fills (``augment``), the only place
a backbone is built (``backbone``), extraction and its device loop (``extract``, ``loop``), the crash-safe
shard store and lock (``shards``), the cache schema with its one writer and one validating reader (``cache``),
the torchrun join of per-rank shards (``distributed``).
May import: ``fastall.data``, the shared contracts and ``fastall.system``.
Never imports training, inference or the CLI.
"""
