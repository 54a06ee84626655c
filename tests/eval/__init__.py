"""Tests of ``mtl_torchrec.eval``."""
