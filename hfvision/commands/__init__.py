"""The ``hfvision`` command's subcommands, one module each: ``add_arguments(parser)`` and ``run(args)``.
``scripts/*.py`` and ``python -m hfvision`` call the same functions through ``hfvision.cli``."""
