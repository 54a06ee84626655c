"""Tests of ``mtl_torchrec.modules``."""
