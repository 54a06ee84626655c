"""Tests of ``mtl_torchrec.data``."""
