"""The ``hfvision`` command: ``hfvision SUBCOMMAND ...`` (also ``python -m hfvision``), and the shared
entry-point behaviour: a user error becomes one line on stderr and exit status 2; a stop signal during
training, one line and 128 + the signal number; Ctrl-C, one line and 130; quiet progress bars; and the process
setup of ``hfvision.process`` (freed large blocks of memory kept for reuse).

Each subcommand is a module of ``hfvision.commands`` (``add_arguments``, ``run``), imported only when used.
``scripts/finetune.py`` is ``hfvision train``, the path documented for ``accelerate launch``. The Gradio demo
stays ``python app.py`` (the file a Space runs) and the speed benchmarks ``python scripts/benchmark.py`` (they
compare against code outside the library).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from hfvision.errors import HfvisionError, RunInterrupted
from hfvision.process import reuse_freed_memory

COMMANDS = {
    "train": "train (fine-tune or from scratch) and evaluate a model from a recipe",
    "evaluate": "evaluate a saved model on a dataset split",
    "predict": "top-k predictions of a trained model for image files, folders or a dataset split",
    "export": "export a trained model to ONNX, validated against torch on real images",
    "explain": "heat maps (Grad-CAM, rollout, Score-CAM, occlusion) for images or a dataset",
    "faithfulness": "deletion/insertion AUC and the randomisation check of every heat-map method",
    "pca": "PCA of pooled features, one panel per model",
    "sweep": "run a recipe's grid/variants and write one comparison table",
    "report": "compare finished runs: table, curves, accuracy vs minutes and PFLOPs",
    "push": "push a finished run's best/ model and card to the Hub",
    "localization": "the known-answer check of heat maps on synthetic shapes",
}


def _parser(name: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"hfvision {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser


def run_command(name: str, argv: list[str]) -> None:
    """Parse ``argv`` for subcommand ``name`` and run it with the one-line error handling of ``run_cli``."""
    module = importlib.import_module(f"hfvision.commands.{name}")
    parse = getattr(module, "parse_args", None) or _parser(name, module).parse_args
    run_cli(lambda args: module.run(parse(args)), argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        listing = "\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())
        print(f"usage: hfvision COMMAND [ARGS ...]   (hfvision COMMAND --help for its options)\n\n{listing}",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    run_command(argv[0], argv[1:])


def run_cli(main: callable, argv: list[str]) -> None:
    from datasets.utils.logging import disable_progress_bar as disable_datasets_progress_bar
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    reuse_freed_memory()
    disable_progress_bars()  # per-file bars of save/load and dataset preparation; the training loop keeps its own
    transformers_logging.disable_progress_bar()
    disable_datasets_progress_bar()
    try:
        main(argv)
    except HfvisionError as exc:  # every process says it: an error may be one process's own
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as exc:  # SIGTERM/SIGUSR1: a checkpoint was written; all processes stop at one step
        if os.environ.get("RANK", "0") == "0":  # so under torchrun / accelerate launch the first one says it
            print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint (epoch end or step) is in checkpoint/; rerun with train.resume=true",
              file=sys.stderr)
        sys.exit(130)
