"""Tests of ``mtl_torchrec.model``."""
