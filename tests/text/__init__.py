"""Tests of ``mtl_torchrec.text``."""
