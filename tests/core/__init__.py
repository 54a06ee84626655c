"""Tests of ``mtl_torchrec.core``."""
