"""The mutation check of tests/MUTATIONS.md: break one recipe option in the library, run the test meant to catch it,
expect a failure, put the file back. Not collected by pytest (no ``test_`` prefix); run it by hand:

    PYTHONPATH=$PWD python tests/mutations.py                 # every mutation, a Markdown table on stdout
    PYTHONPATH=$PWD python tests/mutations.py ema_decay seed  # only these (names from the first column)

Each mutation replaces one exact snippet (it must occur once) and is undone in a ``finally``; the run ends by
checking that ``git diff hfvision/`` is empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONS = "tests/test_options.py::"

# (name, option, file, snippet, replacement, tests that must fail)
MUTATIONS = [
    ("ema_decay", "train.ema_decay", "hfvision/training/trainer.py",
     "get_ema_multi_avg_fn(decay)", "get_ema_multi_avg_fn(0.999)",
     [OPTIONS + "test_ema_is_the_decay_weighted_average_of_the_step_weights"]),
    ("ema_decay_wiring", "train.ema_decay", "hfvision/pipeline.py",
     "make_ema(accelerator.unwrap_model(prepared), train_recipe.ema_decay)",
     "make_ema(accelerator.unwrap_model(prepared), 0.999)",
     [OPTIONS + "test_run_kept_weights_are_the_hand_computed_ema[A]"]),
    ("label_smoothing", "train.label_smoothing", "hfvision/training/trainer.py",
     "label_smoothing=train.label_smoothing", "label_smoothing=0.0",
     [OPTIONS + "test_run_train_loss_is_the_label_smoothed_cross_entropy[A]"]),
    ("warmup_epochs", "train.warmup_epochs", "hfvision/training/optim.py",
     "warmup = round(train.warmup_epochs * steps_per_epoch)", "warmup = 0",
     [OPTIONS + "test_schedule_gives_the_hand_computed_rate"]),
    ("scheduler", "train.scheduler", "hfvision/training/optim.py",
     'if train.scheduler == "cosine":', "if False:",
     [OPTIONS + "test_schedule_gives_the_hand_computed_rate"]),
    ("step_gamma", "train.step_gamma", "hfvision/training/optim.py",
     "return train.step_gamma ** (", "return 0.1 ** (",
     [OPTIONS + "test_schedule_gives_the_hand_computed_rate"]),
    ("step_size_epochs", "train.step_size_epochs", "hfvision/training/optim.py",
     "(train.step_size_epochs * steps_per_epoch)", "(10 * steps_per_epoch)",
     [OPTIONS + "test_schedule_gives_the_hand_computed_rate"]),
    ("accumulation", "train.gradient_accumulation_steps", "hfvision/pipeline.py",
     "gradient_accumulation_steps=train.gradient_accumulation_steps,", "gradient_accumulation_steps=1,",
     [OPTIONS + "test_accumulation_equals_one_large_batch"]),
    ("accumulation_schedule", "train.gradient_accumulation_steps", "hfvision/pipeline.py",
     "steps_per_epoch(len(train_loader), train_recipe.gradient_accumulation_steps)",
     "steps_per_epoch(len(train_loader), 1)",
     [OPTIONS + "test_run_lr_at_every_step_is_the_scheduled_one[B]"]),
    ("clipping_off", "train.max_grad_norm", "hfvision/training/trainer.py",
     "if accelerator.sync_gradients and train.max_grad_norm is not None:", "if False:",
     [OPTIONS + "test_run_clipping_bounds_the_applied_gradient_norm[A]"]),
    ("clipping_fixed", "train.max_grad_norm", "hfvision/training/trainer.py",
     "clip_grad_norm_(model.parameters(), train.max_grad_norm)", "clip_grad_norm_(model.parameters(), 1.0)",
     [OPTIONS + "test_run_clipping_bounds_the_applied_gradient_norm[A]"]),
    ("weight_decay", "train.weight_decay", "hfvision/training/optim.py",
     "groups = parameter_groups(model, train.weight_decay, train.layer_decay)", "groups = parameter_groups(model, 0.0, train.layer_decay)",
     [OPTIONS + "test_optimizer_steps_follow_the_hand_rule"]),
    ("momentum", "train.momentum", "hfvision/training/optim.py",
     "momentum=train.momentum, nesterov=train.momentum > 0", "momentum=0.9, nesterov=True",
     [OPTIONS + "test_optimizer_steps_follow_the_hand_rule"]),
    ("optimizer", "train.optimizer", "hfvision/training/optim.py",
     'if train.optimizer == "adamw":', 'if train.optimizer in ("adamw", "adam"):',
     [OPTIONS + "test_optimizer_steps_follow_the_hand_rule"]),
    ("learning_rate", "train.learning_rate", "hfvision/training/optim.py",
     'group["lr"] = train.learning_rate * group["lr_scale"]', 'group["lr"] = 1e-3 * group["lr_scale"]',
     [OPTIONS + "test_optimizer_steps_follow_the_hand_rule"]),
    ("epochs", "train.epochs", "hfvision/training/trainer.py",
     "for epoch in range(state.epoch, recipe.epochs):", "for epoch in range(state.epoch, 1):",
     [OPTIONS + "test_run_epochs_batches_and_split_sizes[A]"]),
    ("batch_size", "train.batch_size", "hfvision/pipeline.py",
     "train_set.loader(train_recipe.batch_size, shuffle=True)", "train_set.loader(64, shuffle=True)",
     [OPTIONS + "test_run_epochs_batches_and_split_sizes[A]"]),
    ("early_stopping_never", "train.early_stopping_patience", "hfvision/training/trainer.py",
     "if patience is not None and state.epochs_without_improvement >= patience:", "if False:",
     [OPTIONS + "test_early_stopping_stops_after_the_right_epoch"]),
    ("early_stopping_late", "train.early_stopping_patience", "hfvision/training/trainer.py",
     "state.epochs_without_improvement >= patience", "state.epochs_without_improvement > patience",
     [OPTIONS + "test_early_stopping_stops_after_the_right_epoch"]),
    ("checkpoint_every_steps", "train.checkpoint_every_steps", "hfvision/training/trainer.py",
     "self.every_steps = train.checkpoint_every_steps", "self.every_steps = None",
     [OPTIONS + "test_step_checkpoints_every_n_steps_or_minutes"]),
    ("checkpoint_every_steps_run", "train.checkpoint_every_steps", "hfvision/training/trainer.py",
     "self.every_steps = train.checkpoint_every_steps", "self.every_steps = None",
     [OPTIONS + "test_run_writes_step_checkpoints_at_the_asked_steps[A]"]),
    ("checkpoint_every_minutes", "train.checkpoint_every_minutes", "hfvision/training/trainer.py",
     "self.every_seconds = train.checkpoint_every_minutes * 60 if", "self.every_seconds = 60 if",
     [OPTIONS + "test_step_checkpoints_every_n_steps_or_minutes"]),
    ("mixed_precision", "train.mixed_precision", "hfvision/pipeline.py",
     "mixed_precision=train.mixed_precision,", 'mixed_precision="no",',
     [OPTIONS + "test_mixed_precision_runs_the_forward_in_that_precision"]),
    ("report_to", "train.report_to", "hfvision/pipeline.py",
     'log_with=None if train.report_to == "none" else train.report_to,', "log_with=None,",
     [OPTIONS + "test_run_trackers_and_explain_output[A]"]),
    ("seed", "seed", "hfvision/pipeline.py",
     "set_seed(recipe.seed)", "set_seed(42)",
     [OPTIONS + "test_run_starts_from_the_weights_the_seed_gives[A]"]),
    ("random_crop_padding", "data.augment.random_crop_padding", "hfvision/data/transforms.py",
     "random_crop_with_padding(images, self.augment.random_crop_padding, generator)",
     "random_crop_with_padding(images, 4, generator)",
     [OPTIONS + "test_crop_padding_and_flip_follow_the_recipe"]),
    ("random_resized_crop", "data.augment.random_resized_crop", "hfvision/data/transforms.py",
     "if self.augment.random_resized_crop:", "if False:",
     [OPTIONS + "test_the_resized_crop_key_changes_the_training_batches_reproducibly"]),
    ("random_resized_crop_scale", "data.augment.random_resized_crop_scale", "hfvision/data/transforms.py",
     "random_resized_crop(images, self.augment.random_resized_crop_scale,", "random_resized_crop(images, [0.08, 1.0],",
     [OPTIONS + "test_the_resized_crop_key_changes_the_training_batches_reproducibly"]),
    ("random_resized_crop_ratio", "data.augment.random_resized_crop_ratio", "hfvision/data/transforms.py",
     "self.augment.random_resized_crop_ratio, generator)", "[3 / 4, 4 / 3], generator)",
     [OPTIONS + "test_the_resized_crop_key_changes_the_training_batches_reproducibly"]),
    ("horizontal_flip", "data.augment.horizontal_flip", "hfvision/data/transforms.py",
     "if self.augment.horizontal_flip:", "if False:",
     [OPTIONS + "test_crop_padding_and_flip_follow_the_recipe"]),
    ("auto_augment", "data.augment.auto_augment", "hfvision/data/transforms.py",
     '{"randaugment": v2.RandAugment, "trivialaugment"', '{"randaugment": v2.TrivialAugmentWide, "trivialaugment"',
     [OPTIONS + "test_auto_augment_is_the_named_torchvision_policy"]),
    ("mixup_alpha", "data.augment.mixup_alpha", "hfvision/data/transforms.py",
     "v2.MixUp(alpha=self.augment.mixup_alpha", "v2.MixUp(alpha=1.0",
     [OPTIONS + "test_mixup_weights_are_beta_alpha_alpha"]),
    ("cutmix_alpha", "data.augment.cutmix_alpha", "hfvision/data/transforms.py",
     "v2.CutMix(alpha=self.augment.cutmix_alpha", "v2.CutMix(alpha=1.0",
     [OPTIONS + "test_cutmix_weights_follow_beta_alpha_alpha_boxes"]),
    ("val_fraction", "data.val_fraction", "hfvision/data/sources.py",
     '_stratified_split(train, recipe.val_fraction, label_column, seed, "validation")',
     '_stratified_split(train, 0.1, label_column, seed, "validation")',
     [OPTIONS + "test_val_fraction_and_sample_limits"]),
    ("max_train_samples", "data.max_train_samples", "hfvision/data/sources.py",
     "_subsample(train, recipe.max_train_samples, seed)", "_subsample(train, None, seed)",
     [OPTIONS + "test_val_fraction_and_sample_limits"]),
    ("max_eval_samples", "data.max_eval_samples", "hfvision/data/sources.py",
     "_subsample(validation, recipe.max_eval_samples, seed)", "_subsample(validation, None, seed)",
     [OPTIONS + "test_val_fraction_and_sample_limits"]),
    ("label_column", "data.label_column", "hfvision/data/sources.py",
     'find_columns(raw["train"].features, recipe.image_column, recipe.label_column)',
     'find_columns(raw["train"].features, recipe.image_column, None)',
     [OPTIONS + "test_image_and_label_columns_named_in_the_recipe_are_used"]),
    ("image_column", "data.image_column", "hfvision/data/sources.py",
     'find_columns(raw["train"].features, recipe.image_column, recipe.label_column)',
     'find_columns(raw["train"].features, None, recipe.label_column)',
     [OPTIONS + "test_image_and_label_columns_named_in_the_recipe_are_used"]),
    ("image_size", "data.image_size", "hfvision/models/factory.py",
     "return data.image_size or configured or family.config_class().image_size",
     "return configured or family.config_class().image_size",
     [OPTIONS + "test_run_inputs_follow_the_input_spec[A]"]),
    ("mean_std", "data.mean, data.std", "hfvision/models/factory.py",
     "data.mean or BUILT_IN_MEAN, data.std or BUILT_IN_STD", "BUILT_IN_MEAN, BUILT_IN_STD",
     [OPTIONS + "test_run_inputs_follow_the_input_spec[A]"]),
    ("eval_batch_size", "eval.batch_size", "hfvision/pipeline.py",
     "val_set.loader(recipe.eval.batch_size, shuffle=False)", "val_set.loader(256, shuffle=False)",
     [OPTIONS + "test_run_epochs_batches_and_split_sizes[A]"]),
    ("eval_batch_size_test", "eval.batch_size", "hfvision/pipeline.py",
     "data.test.loader(recipe.eval.batch_size, shuffle=False)", "data.test.loader(256, shuffle=False)",
     [OPTIONS + "test_run_epochs_batches_and_split_sizes[A]"]),
    ("latency_batch_size", "eval.latency_batch_size", "hfvision/evaluation/profile.py",
     "pixel_values = torch.randn(batch_size,", "pixel_values = torch.randn(64,",
     [OPTIONS + "test_latency_is_timed_on_batches_of_the_asked_size"]),
    ("latency_batch_size_wiring", "eval.latency_batch_size", "hfvision/evaluation/artifacts.py",
     "recipe.eval.latency_batch_size)", "64)",
     [OPTIONS + "test_run_latency_is_measured_at_the_asked_batch_size[A]"]),
    ("explain", "eval.explain", "hfvision/pipeline.py",
     "if recipe.eval.explain:", "if False:",
     [OPTIONS + "test_run_trackers_and_explain_output[A]"]),
    ("decode_workers", "data.decode_workers", "hfvision/pipeline.py",
     "spec.crop_pct, recipe.data.decode_workers, accelerator.print)", "spec.crop_pct, None, accelerator.print)",
     ["tests/test_store.py::test_the_recipes_decode_workers_reach_the_store"]),
    ("resize", "data.resize", "hfvision/models/factory.py",
     'if data.resize == "squash":', 'if False:',
     ["tests/test_transfer.py::test_the_recipe_chooses_the_resize_policy"]),
    ("crop_pct", "data.crop_pct", "hfvision/models/factory.py",
     "crop_pct=data.crop_pct or checkpoint_crop_pct or DEFAULT_CROP_PCT",
     "crop_pct=checkpoint_crop_pct or DEFAULT_CROP_PCT",
     ["tests/test_transfer.py::test_the_recipe_chooses_the_resize_policy"]),
    ("streaming", "data.streaming", "hfvision/pipeline.py",
     "    if recipe.data.streaming:\n        data = load_streaming_data", "    if False:\n        data = load_streaming_data",
     ["tests/test_streaming.py::test_two_processes_stream_and_a_sigkill_then_resume_ends_at_the_uninterrupted_weights"]),
]


def run_mutation(name, option, path, snippet, replacement, tests) -> tuple[bool, str, float]:
    """Apply, run the tests, undo. Returns (caught: the tests failed, the failing test line, seconds)."""
    file = REPO / path
    original = file.read_text()
    if original.count(snippet) != 1:
        raise SystemExit(f"{name}: the snippet occurs {original.count(snippet)} times in {path}; update MUTATIONS")
    start = time.monotonic()
    try:
        file.write_text(original.replace(snippet, replacement))
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                capture_output=True, text=True, cwd=REPO, check=False,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        file.write_text(original)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    return result.returncode == 1 and bool(failed), (failed[0] if failed else result.stdout.strip().splitlines()[-1]), \
        time.monotonic() - start


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m[0] in names]
    print("| option | mutation (file: snippet -> replacement) | failing test | caught |")
    print("| --- | --- | --- | --- |")
    missed = 0
    for name, option, path, snippet, replacement, tests in chosen:
        caught, line, seconds = run_mutation(name, option, path, snippet, replacement, tests)
        missed += not caught
        failing = line.removeprefix("FAILED ").split(" - ")[0].removeprefix("tests/test_options.py::")
        print(f"| `{option}` | {Path(path).name}: `{snippet}` -> `{replacement}` | `{failing}` | "
              f"{'yes' if caught else '**NO**'} ({seconds:.0f} s) |", flush=True)
    clean = subprocess.run(["git", "diff", "--quiet", "--", "hfvision"], cwd=REPO, check=False).returncode == 0
    print(f"\n{len(chosen) - missed}/{len(chosen)} mutations caught; library back as committed: {clean}")
    return 0 if missed == 0 and clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
