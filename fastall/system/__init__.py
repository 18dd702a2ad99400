"""Shared plumbing with one owner each: file safety (atomic files and folders), devices and precision, pids,
torch.distributed under torchrun (``distributed``: may import torch).

May import only the shared contracts (``fastall.errors``). Imported by every stage.
"""
