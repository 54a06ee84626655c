"""Checkpoints with ``torch.distributed.checkpoint`` (DCP).

Sharded tables are written by the ranks that own them and can be read back under another
sharding plan or rank count (DCP reshards on load). Only tensors go through DCP; every other
value (optimizer hyper-parameters, training position, the config) is plain JSON in
``meta.json``, and DCP's own ``.metadata`` file is read by an unpickler that accepts only the
exact DCP metadata classes a checkpoint holds, so loading a checkpoint never runs code from it.

Layout of a run directory::

    run_dir/
      config.yaml
      checkpoints/
        latest                  # text file: "step_000120" (replaced atomically)
        best                    # the same for the best validated checkpoint (train.select_by only)
        step_000100/            # one complete checkpoint
          .metadata, __0_0.distcp, ...   # DCP: model (incl. sharded tables) + optimizer tensors
          meta.json             # train state, world size, tables/tasks/shapes, non-tensor state
          rng/rank_00000.json   # per-rank torch/numpy/python RNG states
          manifest.json         # size and sha256 of every other file of the folder
        step_000120/
        .tmp-step_000140/       # a save in progress (or interrupted): never pointed at

A checkpoint is written under ``.tmp-step_N``; each rank hashes the files it wrote, rank 0
gathers the hashes, writes ``meta.json`` and then ``manifest.json``, renames the folder to
``step_N`` and only then moves ``latest``; so a crash at any moment leaves ``latest`` naming a
complete checkpoint, and every complete checkpoint has a manifest. Loading verifies the manifest
first (rank 0 hashes, every rank gets the verdict) and names any damaged or missing file; a
checkpoint written before manifests existed loads with a one-line warning. The newest ``keep``
checkpoints are kept, and the one ``best`` names is never deleted by that rotation.

One module per job (this package file holds only this description; import from the modules):

* :mod:`.dcp_io`: saving and loading (``save_checkpoint``, ``save_run_checkpoint``, ``load_checkpoint``);
* :mod:`.run_dir`: where a run's checkpoints are (``latest`` / ``best`` pointers, ``step_N`` names);
* :mod:`.manifest`: the manifest's hashes, written and verified;
* :mod:`.safe_load`: reading DCP metadata and bookkeeping JSON without running code from them;
* :mod:`.state_tree`: splitting a state dict into DCP tensors and JSON, and the model description;
* :mod:`.rng`: the per-rank RNG state files.

Example::

    from mtl_torchrec.distributed.checkpoint.dcp_io import load_checkpoint, save_run_checkpoint
    from mtl_torchrec.distributed.checkpoint.run_dir import latest_checkpoint

    path = save_run_checkpoint(run_dir, step=100, model=dmp, optimizer=opt, meta={"epoch": 0})
    ckpt = latest_checkpoint(run_dir)            # run_dir/checkpoints/step_000100
    meta = load_checkpoint(ckpt, dmp, opt)       # also accepts run_dir itself
"""
