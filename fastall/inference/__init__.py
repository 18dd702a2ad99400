"""Stage 4, inference: the end-to-end model (image -> preprocess -> frozen backbone -> Head) and its uses.

Owns: the nn.Module (``model``), run/head/export artifacts and their one loader (``artifacts``), precision
agreement and calibration (``precision``), the runtime (``runtime``), predict, verify, bench and export.
May import: ``fastall.features``, ``fastall.data``, ``fastall.training`` (metrics only), the shared contracts
and ``fastall.system``. Never imports the CLI.
"""
