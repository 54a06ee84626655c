"""Configuration loading: validated dataclasses from YAML plus ``key=value`` overrides.

Config sections are dataclasses checked by pydantic v2 (:func:`config_dataclass`; plain
dataclasses work too, e.g. the data spec's). Keyword construction, ``dataclasses.asdict`` and
``copy.deepcopy`` work as for any dataclass. :func:`from_dict` validates a whole tree at once and
turns every problem into one line naming the full dotted key and what is allowed::

    model.mmoe.num_experts: must be >= 1, got 0
    train.loss_balance: 'gradnrm' is not one of ['fixed', 'gradnorm', 'mgda_ub', 'uncertainty']
    unknown config key 'train.epoch' (known here: ['balance', 'checkpoint_every', ...])

Values keep the types YAML gave them: an integer key refuses ``1.5`` and ``'3'``, a boolean
refuses the string ``'true'``, a string refuses ``5`` (YAML has already typed ``true``, numbers
and lists). Overrides address list entries by index: ``model.tasks.0.weight=2``.

One module per job (this package file holds only this description; import from the modules):

* :mod:`.fields`: the value types and :func:`~.fields.config_dataclass` that config sections are written with;
* :mod:`.validate`: :func:`~.validate.from_dict` (type-checking a mapping into a dataclass tree) and ``to_dict``;
* :mod:`.messages`: pydantic's errors as one ``<dotted key>: <message>`` line each;
* :mod:`.yaml_files`: strict YAML reading and writing;
* :mod:`.overrides`: ``key=value`` overrides on nested mappings;
* :mod:`.load`: :func:`~.load.load_config`, the file, the overrides and the check together.

Example::

    from mtl_torchrec.core.config.fields import PositiveInt, config_dataclass
    from mtl_torchrec.core.config.load import load_config

    @config_dataclass
    class Section:
        size: PositiveInt = 8

    load_config(Section, None, ["size=0"])   # ConfigError: size: must be >= 1, got 0
"""
