"""What every benchmark job writes its results with: the repository's paths, the environment and hardware line, the
``<name>_<cpu|gpu>.md``/``.json`` pair of a comparison, a target's verdict and the number format of the tables."""

import time
from pathlib import Path

import torch

from hfvision.process import reuse_freed_memory
from hfvision.evaluation.environment import environment
from hfvision.fileio import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def device_and_environment() -> tuple[torch.device, dict]:
    """The device the jobs run on (the GPU when there is one), with torch seeded 0, and the environment they
    record: ``hfvision.evaluation.environment`` plus how the C library's allocator was set up."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    env = environment()
    # run_cli made this call already, as for every hfvision command; it returns the same answer again.
    env["malloc"] = ("freed large blocks kept for reuse (hfvision.process.reuse_freed_memory), as in hfvision's commands"
                     if reuse_freed_memory() else "the C library's defaults or the environment's settings")
    return device, env


def hardware(env: dict) -> str:
    return env["gpu"] or f"{env['cpu']} CPU x {env['cpu_count']} (torch threads {torch.get_num_threads()})"


def device_tag(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def write_results(args, device, env: dict, name: str, title: str, notes: list[str], table: str, data: dict) -> None:
    """``<args.out>/<name>_<cpu|gpu>.md`` (header, notes, table) and ``.json`` (environment and every number)."""
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    date = time.strftime("%Y-%m-%d %H:%M")
    text = (f"# {title}\n\n{hardware(env)}; {date}; Python {env['python']}, {versions}; git {env['git_sha']}; "
            f"malloc: {env['malloc']}.\n"
            f"Command: `python scripts/benchmark.py {' '.join(args.argv)}`\n\n" + "".join(f"- {n}\n" for n in notes)
            + "\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}_{device_tag(device)}.md").write_text(text)
    write_json_atomic(args.out / f"{name}_{device_tag(device)}.json",
                      {"title": title, "date": date, "command": ["scripts/benchmark.py", *args.argv],
                       "environment": env, "notes": notes, **data})
    print(text, flush=True)


def met(value: float, target: float) -> str:
    return f"{value:.2f}x (target >= {target}x: {'met' if value >= target else 'MISSED'})"


def number_cell(value) -> str:
    """A table cell of the families and tuning-modes tables: integers with thousands separators, floats to 0.1."""
    return f"{value:,}" if isinstance(value, int) else f"{value:.1f}" if isinstance(value, float) else str(value)
