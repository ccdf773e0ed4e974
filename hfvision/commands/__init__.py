"""The ``hfvision`` command's subcommands, one module each: ``add_arguments(parser)`` and ``run(args)``.
``python -m hfvision`` and ``scripts/finetune.py`` (``train``) call the same functions through ``hfvision.cli``."""
