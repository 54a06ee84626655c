"""Data: schemas and column tables, the built-in sources (synthetic, MovieLens), YAML data specs, fitted
preprocessing, and batches for TorchRec pipelines.
"""
