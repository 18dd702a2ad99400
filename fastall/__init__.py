"""fastall: a feature-cache fast trainer for the frozen-ResNet-50 C-NMC 2019 leukemia classifier."""

__version__ = "0.1.0"
