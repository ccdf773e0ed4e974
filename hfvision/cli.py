"""Shared entry-point behaviour: a user error becomes one line on stderr and exit status 2."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from hfvision.errors import HfvisionError
from hfvision.training.trainer import RunInterrupted


def run_cli(main: Callable[[list[str]], object], argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()  # per-file bars of save/load; the training loop keeps its own
    transformers_logging.disable_progress_bar()
    try:
        main(argv)
    except HfvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as exc:  # SIGTERM/SIGUSR1: a checkpoint was written
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint (epoch end or step) is in checkpoint/; rerun with train.resume=true",
              file=sys.stderr)
        sys.exit(130)
