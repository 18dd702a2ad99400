"""Stage 4, inference: the end-to-end model (image -> preprocess -> frozen backbone -> Head) and its uses.

Owns, one way down: predict, verify, bench and ``export`` (uses) -> ``artifacts`` (the one loader of a run,
head.pt or export file, with its checks) -> ``precision`` (the one agreement rule and calibration pick) ->
``model`` (the nn.Module) -> ``runtime`` (a backbone at a precision and backend).
May import: ``fastall.features``, ``fastall.data``, ``fastall.training`` (metrics only), the shared contracts
and ``fastall.system``. Never imports the CLI.
"""
