"""Real photos in bounded memory (``--data-at-scale``): a generated folder of large JPEGs, one epoch of a tiny ViT at
224 px through ``hfvision train``, its peak resident memory; decode throughput of the store beside
``decode_split`` as it was when issue 21 measured it (git ``ISSUE_COMMIT``, run from ``git archive`` in a process of
its own) and beside an idealised 0.x decode (one process, every file decoded whole, then fitted, nothing held); the
second run of the same recipe, which reuses the stores. ``--larger-than-ram N`` runs the same recipe on N generated 224 px photos, a store larger than RAM."""

import json
import multiprocessing
import statistics
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.results import REPO, write_results
from hfvision.data.images import load_rgb
from hfvision.data.store import DecodePlan, open_store
from hfvision.evaluation.compare import markdown_table

CLASSES = ("a", "b", "c", "d", "e")
MODEL = {"model.config.image_size": 224, "model.config.patch_size": 16, "model.config.hidden_size": 32,
         "model.config.num_hidden_layers": 1, "model.config.num_attention_heads": 2,
         "model.config.intermediate_size": 64}


def _photo(task: tuple[Path, int, int, int]) -> None:
    """One smooth random photo (a 15 x 20 grid of random colours, bicubic-upsampled), JPEG quality 90."""
    path, seed, height, width = task
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (max(2, height // 100), max(2, width // 100), 3), dtype=np.uint8)
    Image.fromarray(grid).resize((width, height), Image.BICUBIC).save(path, "JPEG", quality=90)


def photo_folder(root: Path, count: int, height: int, width: int) -> Path:
    """``root`` filled with ``count`` photos in 5 class folders (kept between runs; made in parallel)."""
    done = root / f".complete-{count}-{height}x{width}"
    if done.exists():
        return root
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    tasks = [(root / CLASSES[i % 5] / f"{i:06d}.jpg", i, height, width) for i in range(count)]
    with multiprocessing.get_context("fork").Pool(len(os.sched_getaffinity(0))) as pool:
        pool.map(_photo, tasks, chunksize=64)
    done.touch()
    return root


def _fit_the_old_way(array: np.ndarray, size: int) -> np.ndarray:
    """hfvision 0.x's squash (git 5c9f08c, ``fit_to_input`` without crop_pct): the float bilinear resize, rounded."""
    if max(array.shape[:2]) <= size and array.shape[0] == array.shape[1]:
        return array
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()


def decode_the_old_way(files: list[Path], size: int) -> float:
    """Photos/s of hfvision 0.x's ``decode_split``: one process, each file decoded at full size, then fitted."""
    start = time.perf_counter()
    for path in files:
        _fit_the_old_way(load_rgb(path), size)
    return len(files) / (time.perf_counter() - start)


def store_build_rate(files: list[Path], root: Path) -> float:
    """Photos/s of building a store of ``files`` at 224 px (key, header pass, forked decode, checksum), from scratch."""
    from datasets import Dataset, Image as ImageFeature

    ds = Dataset.from_dict({"image": [str(f) for f in files], "label": [0] * len(files)}).cast_column(
        "image", ImageFeature())
    with tempfile.TemporaryDirectory(dir=root) as cache:
        start = time.perf_counter()
        open_store(ds, "image", [0] * len(files), DecodePlan(224), "train", root=Path(cache), log=lambda line: None)
        return len(files) / (time.perf_counter() - start)


ISSUE_COMMIT = "7d853a4"  # the last commit before the store: decode_split held every photo whole, in one thread
_TIME_OLD_DECODE = """
import json, sys, time
from datasets import Dataset, Image
from hfvision.data.sources import decode_split
files = open(sys.argv[1]).read().split()
ds = Dataset.from_dict({"image": files, "label": [0] * len(files)}).cast_column("image", Image())
start = time.perf_counter()
split = decode_split(ds, "image", "label", 224)
print(json.dumps({"rate": len(files) / (time.perf_counter() - start), "shape": list(split.pixels.shape)}))
"""


def issue_time_package(root: Path) -> Path | None:
    """``hfvision/`` at ``ISSUE_COMMIT`` unpacked under ``root`` (None outside a git checkout)."""
    target = root / f"hfvision-{ISSUE_COMMIT}"
    if not (target / "hfvision").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", ISSUE_COMMIT, "hfvision"], cwd=REPO, capture_output=True)
        if archive.returncode != 0:
            return None
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def decode_split_at_issue_time(files: list[Path], package: Path) -> float:
    """Photos/s of ``decode_split`` at ``ISSUE_COMMIT`` on ``files`` (timed inside its process, imports excluded)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=package) as listing:
        listing.write("\n".join(str(f) for f in files))
        listing.flush()
        done = subprocess.run([sys.executable, "-c", _TIME_OLD_DECODE, listing.name], cwd=package, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(package)})
    if done.returncode != 0:
        raise RuntimeError(f"decode_split at {ISSUE_COMMIT} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])["rate"]


def decode_comparison(files: list[Path], baseline_photos: int, root: Path, rounds: int = 3) -> dict:
    """The store's build (all cores) alternated, A B C A B C, with ``decode_split`` at issue time and the idealised
    0.x decode (each one process), on disjoint photos; medians and the median of the per-round ratios."""
    package = issue_time_package(root)
    old, ideal, new = [], [], []
    chunk = 3 * baseline_photos
    for index in range(rounds):
        if package is not None:
            old.append(decode_split_at_issue_time(files[index * baseline_photos:(index + 1) * baseline_photos], package))
        ideal.append(decode_the_old_way(files[(rounds + index) * baseline_photos:(rounds + index + 1) * baseline_photos],
                                        224))
        new.append(store_build_rate(files[len(files) - (index + 1) * chunk:len(files) - index * chunk], root))
    ratios = [n / o for n, o in zip(new, old)]
    ideal_ratios = [n / o for n, o in zip(new, ideal)]
    return {"issue_time": old, "ideal": ideal, "new": new, "ratios": ratios,
            "ratio": statistics.median(ratios) if ratios else None, "ideal_ratios": ideal_ratios,
            "ideal_ratio": statistics.median(ideal_ratios), "issue_time_median": statistics.median(old) if old else None,
            "ideal_median": statistics.median(ideal), "new_median": statistics.median(new)}


def train_once(folder: Path, output_dir: Path, cache: Path, epochs: int = 1) -> dict:
    """``hfvision train`` of the quickstart recipe on ``folder`` at 224 px, in a process of its own: its metrics and
    its peak resident memory (the largest of it and its decode workers)."""
    overrides = {"output_dir": output_dir, "data.dataset": folder, "train.epochs": epochs, "train.report_to": "none",
                 "eval.explain": False, "eval.latency_batch_size": 8, **MODEL}
    command = [sys.executable, "-m", "hfvision", "train", str(REPO / "recipes" / "quickstart.yaml"),
               *(f"{key}={value}" for key, value in overrides.items())]
    env = {**os.environ, "HFVISION_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache / "datasets")}
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise RuntimeError(f"hfvision train failed:\n{log[-3000:]}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return {"metrics": metrics, "peak_rss_gb": usage.ru_maxrss / 1e6, "wall_seconds": time.perf_counter() - started,
            "log": [line for line in log.splitlines() if line.startswith("data:")]}


def _store_summary(run: dict) -> dict:
    stores = run["metrics"]["data"]["stores"]
    return {"images": sum(s["images"] for s in stores.values()), "seconds": sum(s["seconds"] for s in stores.values()),
            "built": all(s["built"] for s in stores.values()), "sha256": {k: s["sha256"] for k, s in stores.items()},
            "data_seconds": run["metrics"]["timing"]["data_seconds"]}


def run(args, device, env) -> None:
    if args.larger_than_ram:
        return run_larger_than_ram(args, device, env)
    folder = photo_folder(args.photo_folder / f"photos-{args.photos}", args.photos, 1500, 2000)
    files = sorted(folder.rglob("*.jpg"))
    decode = decode_comparison(files, args.baseline_photos, args.photo_folder)
    with tempfile.TemporaryDirectory(dir=args.photo_folder) as scratch:
        scratch = Path(scratch)
        first = train_once(folder, scratch / "first", scratch / "cache")
        second = train_once(folder, scratch / "second", scratch / "cache")
    built, reused = _store_summary(first), _store_summary(second)
    store_rate = built["images"] / built["seconds"]
    columns = ("run", "peak RSS (GB)", "data stage (s)", "store build (photos/s)", "wall (s)")
    rows = [dict(zip(columns, ("first (stores built)", first["peak_rss_gb"], built["data_seconds"], store_rate,
                               first["wall_seconds"]))),
            dict(zip(columns, ("second (stores reused)", second["peak_rss_gb"], reused["data_seconds"], None,
                               second["wall_seconds"])))]
    table = markdown_table(rows, columns, lambda value: "" if value is None else
                           f"{value:.2f}" if isinstance(value, float) else str(value))
    ratio, share = decode["ratio"], reused["data_seconds"] / built["data_seconds"]
    if ratio is None:
        against_issue = f"decode_split at {ISSUE_COMMIT}: not run (no git history here; target >= 10x: NOT MEASURED)"
    else:
        against_issue = (f"decode_split as it was when the issue measured it (git {ISSUE_COMMIT}: one thread, every "
                         f"photo decoded and held whole) {decode['issue_time_median']:.1f} photos/s: median ratio "
                         f"{ratio:.1f}x (rounds {', '.join(f'{r:.1f}' for r in decode['ratios'])}; target >= 10x: "
                         f"{'met' if ratio >= 10 else 'MISSED'})")
    notes = [f"{args.photos} generated photos of 2000x1500 (smooth random content, JPEG q90), 5 classes, "
             f"{sum(f.stat().st_size for f in files) / 1e6:.0f} MB; one epoch of a ViT (224 px, patch 16, width 32, "
             f"1 layer) by `hfvision train recipes/quickstart.yaml data.dataset=FOLDER`",
             f"peak RSS {first['peak_rss_gb']:.2f} GB (target <= 3 GB: "
             f"{'met' if first['peak_rss_gb'] <= 3 else 'MISSED'})",
             f"decode + resize at 224 px, alternated 3 times on disjoint photos: building a store (key, header pass, "
             f"forked decode on every core, checksum) {decode['new_median']:.1f} photos/s ({3 * args.baseline_photos} "
             f"photos a round; inside the run: {store_rate:.1f} photos/s over all three splits), against, on "
             f"{args.baseline_photos} photos a round each: {against_issue}; an idealised 0.x decode (one process, each "
             f"photo decoded whole, then fitted, nothing held) {decode['ideal_median']:.1f} photos/s: "
             f"{decode['ideal_ratio']:.1f}x (rounds {', '.join(f'{r:.1f}' for r in decode['ideal_ratios'])})",
             f"second run: data stage {reused['data_seconds']:.2f} s = {100 * share:.1f}% of the first "
             f"(target <= 5%: {'met' if share <= 0.05 else 'MISSED'}); same pixels: "
             f"{'yes' if built['sha256'] == reused['sha256'] else 'NO'} (SHA-256 of each split's store)",
             *first["log"]]
    write_results(args, device, env, "data_at_scale", "Real photos in bounded memory", notes, table,
                  {"first": {k: v for k, v in first.items() if k != "metrics"}, "second": {
                      k: v for k, v in second.items() if k != "metrics"}, "decode_comparison": decode,
                   "store": built, "reused": reused, "ratio": ratio, "second_run_share": share})


def run_larger_than_ram(args, device, env) -> None:
    """One epoch on ``args.larger_than_ram`` generated 224 px photos: a store of 3 x 224 x 224 bytes each."""
    count = args.larger_than_ram
    folder = photo_folder(args.photo_folder / f"photos-{count}-224", count, 224, 224)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    with tempfile.TemporaryDirectory(dir=args.photo_folder) as scratch:
        result = train_once(folder, Path(scratch) / "run", Path(scratch) / "cache")
    summary = _store_summary(result)
    store_gb = summary["images"] * 3 * 224 * 224 / 1e9
    notes = [f"{count} generated 224x224 photos (JPEG q90); stores {store_gb:.1f} GB on a machine with {ram:.1f} GB "
             f"of RAM; one epoch of the ViT of `--data-at-scale`",
             f"peak RSS {result['peak_rss_gb']:.2f} GB (target <= 4 GB: "
             f"{'met' if result['peak_rss_gb'] <= 4 else 'MISSED'}); data stage {summary['data_seconds']:.0f} s; "
             f"wall {result['wall_seconds']:.0f} s; test accuracy {result['metrics']['test']['accuracy']:.4f}",
             *result["log"]]
    write_results(args, device, env, "larger_than_ram", "A store larger than RAM", notes, "",
                  {"run": {k: v for k, v in result.items() if k != "metrics"}, "store": summary, "ram_gb": ram,
                   "store_gb": store_gb, "training": result["metrics"]["training"]})
