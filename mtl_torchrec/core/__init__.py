"""The bottom layer: errors, configuration loading, registries and file I/O, imported by every package.

It imports nothing else from ``mtl_torchrec``.
"""
