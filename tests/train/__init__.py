"""Tests of ``mtl_torchrec.train``."""
