"""Train images/s of two hfvision checkouts (before and after the decoded-image store), alternated A B A B after a
warm-up round, one process each run; the measurement behind docs/benchmarks.md's "CIFAR-10 is not slower".

    git worktree add --detach ../before 5c9f08c
    python benchmarks/probes/store_vs_memory_cifar.py ../before . 3
"""
import json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path
OLD, NEW = (str(Path(p).resolve()) for p in sys.argv[1:3])
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
CIFAR10 = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"
args = ["recipes/quickstart.yaml", f"data.dataset={CIFAR10}", "data.max_train_samples=10000",
        "data.max_eval_samples=1000", "data.mean=[0.4914,0.4822,0.4465]", "data.std=[0.247,0.2435,0.2616]",
        "train.epochs=1", "train.batch_size=128", "train.report_to=none", "eval.explain=false", "eval.latency_batch_size=8"]
cache = tempfile.mkdtemp(prefix="ab-cache-")
rates = {"old": [], "new": []}
for r in range(ROUNDS + 1):  # round 0 warms both (the new one builds its stores)
    for name, tree in (("old", OLD), ("new", NEW)):
        out = tempfile.mkdtemp(prefix=f"ab-{name}-")
        env = {**os.environ, "PYTHONPATH": tree, "HFVISION_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        t = time.time()
        p = subprocess.run([sys.executable, "-m", "hfvision", "train", *args, f"output_dir={out}"], cwd=tree, env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
        m = json.load(open(f"{out}/metrics.json"))
        rate = m["history"][0]["train_images_per_second"]
        print(r, name, round(rate, 1), "img/s", "wall", round(time.time() - t, 1), "data", m.get("timing", {}).get("data_seconds"), flush=True)
        if r:
            rates[name].append(rate)
ratios = [n / o for n, o in zip(rates["new"], rates["old"])]
print(json.dumps({"old": rates["old"], "new": rates["new"], "ratios": ratios,
                  "median_ratio": statistics.median(ratios), "old_median": statistics.median(rates["old"]),
                  "new_median": statistics.median(rates["new"])}))
