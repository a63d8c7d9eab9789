"""Robust-dataset benchmarking harness.

Compare robust dataset learning against adversarial training and dataset distillation
under one evaluation protocol (see README.md and DESIGN.md).
"""

__version__ = "0.1.0"
