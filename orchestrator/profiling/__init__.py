"""Measured costs: each block of a model on each device (cached), and each planned stage on its device."""

from orchestrator.profiling.cache import cached_profile
from orchestrator.profiling.measure import profile

__all__ = ["cached_profile", "profile"]
