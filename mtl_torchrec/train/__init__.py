"""The training loop (:class:`~mtl_torchrec.train.trainer.Trainer`) and its callbacks."""
