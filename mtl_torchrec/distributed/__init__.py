"""Process groups, sharders and sharding plans, optimizer wiring, state copying and DCP checkpoints.

Used by ``train/`` and ``eval/`` alike; knows nothing about either.
"""
