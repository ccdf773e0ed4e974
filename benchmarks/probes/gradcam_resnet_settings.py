"""Probe (python benchmarks/probes/gradcam_resnet_settings.py NAME WIDTHS EPOCHS LR [OVERRIDES_JSON]): fit the quickstart recipe as a CIFAR ResNet on the synthetic shapes and print the fit seconds and Grad-CAM known answer (peak in box, accuracy over 200 images). Run from the repo root; 2 torch threads (the default here). Settings of tests/test_resnet_cifar.py: w8e3 "[8,16,32,64]" 3 0.002 and {"seed": 1} / {"seed": 2}."""
import sys, time, json
sys.path.insert(0, "tests")
import torch
from conftest import REPO, tiny_recipe_overrides
from transformers import AutoModelForImageClassification
from hfvision.recipe import load_recipe
from hfvision.pipeline import fit
from hfvision.explain.api import synthetic_localization
from hfvision.spec import InputSpec
NORM = InputSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
name, widths, epochs, lr = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
root = f"/tmp/gc_{name}"
overrides = {"data.max_train_samples": None, "data.max_eval_samples": None, "train.epochs": epochs,
             "model.name": "resnet18_cifar", "model.config": {"stage_widths": widths}, "train.learning_rate": lr, **extra}
t = time.perf_counter()
fit(load_recipe(REPO / "recipes" / "quickstart.yaml", tiny_recipe_overrides(root, **overrides)))
fit_s = time.perf_counter() - t
m = AutoModelForImageClassification.from_pretrained(f"{root}/best").eval()
r = synthetic_localization(m, NORM, "gradcam", count=200)
print(json.dumps({"name": name, "fit_s": round(fit_s, 1), "peak_in_box": r["peak_in_box"], "accuracy": r["accuracy"]}))
