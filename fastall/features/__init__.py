"""Stage 2, features: the frozen backbone run once over augmented views, into the HDF5 feature cache.

Owns: augmentation and its fills (``augment``), the only place
a backbone is built (``backbone``), extraction and its device loop (``extract``, ``loop``), the crash-safe
shard store and lock (``shards``), the cache schema with its one writer and one validating reader (``cache``),
its settings (``extract_config``) and record (``extract_record``), the share of one
process or one torchrun rank and the join of per-rank shards (``ranks``).
May import: ``fastall.data``, the shared contracts and ``fastall.system``.
Never imports training, inference or the CLI.
"""
