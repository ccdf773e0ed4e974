"""The decoded-image store: built once, reused while nothing it depends on changes, rebuilt when anything does,
never half-used; read a batch at a time; one build under several processes, each reading only its own batches."""

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import REPO, free_port
from datasets import Image
from PIL import Image as PILImage

from hfvision.data import images, store
from hfvision.data.sources import decode_split, image_folder, load_raw
from hfvision.data.synthetic import load_synthetic, make_images
from hfvision.errors import HfvisionError

# The code that makes pixels from files. Changing any of it changes what a store or a feature-cache entry holds:
# bump store.PREPROCESSING_VERSION, then set this to the new hash (the failure message prints it).
PREPROCESSING_CODE = (images._open, images.to_rgb_array, images.load_rgb, images.resize_rgb, images._scale_size,
                      images.output_side, images.draft_size, images.fit_to_input, images.decode_fitted,
                      store._header_sides, store._decode_rows, store._common_side)
def test_the_preprocessing_version_moves_with_the_code():
    source = "".join(inspect.getsource(function) for function in PREPROCESSING_CODE)
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert (store.PREPROCESSING_VERSION, digest) == PINNED, (
        f"the decode/resize code changed: bump store.PREPROCESSING_VERSION and set PINNED to "
        f"({store.PREPROCESSING_VERSION + 1}, {digest!r})")


PINNED = (5, '0aec163fd21b70af1ef8161bcbb09f81afe95e053fbceb1c206b8138cfeef418')


@pytest.fixture
def stores(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("HFVISION_CACHE", str(root))
    return root / "stores"


@pytest.fixture
def photo_folder(tmp_path):
    """An image folder of 24 JPEGs, 2 classes, of two sizes (48x64 and 64x48)."""
    root = tmp_path / "photos"
    pictures = make_images(24, 64)[0]
    for index, picture in enumerate(pictures):
        folder = root / "train" / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        picture = picture[:48] if index % 3 else picture[:, :48]
        PILImage.fromarray(np.ascontiguousarray(picture)).save(folder / f"{index:02d}.jpg", quality=95)
    return root


def decoded(folder, **kwargs):
    ds = load_raw(str(folder))["train"]
    return decode_split(ds, "image", "label", kwargs.pop("size", 32), split=kwargs.pop("split", "train"), **kwargs)


def test_a_store_is_built_once_then_reused_with_the_same_pixels(stores, photo_folder):
    first = decoded(photo_folder)
    second = decoded(photo_folder)
    assert first.store.built and not second.store.built and first.store.path == second.store.path
    assert torch.equal(first.pixels[:], second.pixels[:]) and torch.equal(first.labels, second.labels)
    assert first.pixels.shape == (24, 3, 32, 32) and len(list(stores.iterdir())) == 2  # the store and its lock


def test_the_store_holds_what_decoding_each_image_gives(stores, photo_folder):
    split = decoded(photo_folder, crop_pct=0.875)
    ds = load_raw(str(photo_folder))["train"].cast_column("image", Image(decode=False))
    expected = [images.resize_rgb(images.decode_fitted(v, 32, 0.875), 32) for v in ds["image"]]
    assert np.array_equal(split.pixels[:].permute(0, 2, 3, 1).numpy(), np.stack(expected))


def test_parallel_decoding_writes_the_same_store_as_one_process(stores, photo_folder, monkeypatch):
    monkeypatch.setattr(store, "ROWS_PER_TASK", 5)  # 5 tasks over 2 processes
    pixels_one = decoded(photo_folder, workers=1).pixels[:]
    for path in stores.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
    two = decoded(photo_folder, workers=2)
    assert two.store.built and torch.equal(two.pixels[:], pixels_one)


def _change_content(folder):
    path = sorted(folder.rglob("*.jpg"))[3]
    PILImage.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path, quality=95)


def _add_file(folder):
    PILImage.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "train" / "a" / "new.jpg")


def _remove_file(folder):
    sorted(folder.rglob("*.jpg"))[5].unlink()


def _touch(folder):
    path = sorted(folder.rglob("*.jpg"))[0]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))


@pytest.mark.parametrize("change", [_change_content, _add_file, _remove_file, _touch],
                         ids=["file changed", "file added", "file removed", "mtime changed"])
def test_a_changed_source_folder_gives_a_new_store(stores, photo_folder, change):
    first = decoded(photo_folder)
    change(photo_folder)
    second = decoded(photo_folder)
    assert second.store.built and second.store.path != first.store.path


@pytest.mark.parametrize("setting", [{"size": 24}, {"crop_pct": 0.875}, {"on_bad_image": "skip"},
                                     {"split": "validation"}],
                         ids=["decode size", "resize policy", "on_bad_image", "split"])
def test_each_decode_setting_gives_a_new_store(stores, photo_folder, setting):
    first = decoded(photo_folder)
    second = decoded(photo_folder, **setting)
    assert second.store.built and second.store.path != first.store.path


def test_rows_labels_and_the_preprocessing_version_are_in_the_key(stores, monkeypatch):
    raw = load_synthetic(64, 8)["train"]
    key = store.store_key(raw, "image", raw["label"][:], store.DecodePlan(32), "train")
    assert store.store_key(raw.select(range(63)), "image", raw["label"][:63], store.DecodePlan(32), "train") != key
    assert store.store_key(raw, "image", [0] * 64, store.DecodePlan(32), "train") != key  # relabelled (data.classes)
    shuffled = raw.select(list(range(1, 64)) + [0])
    assert store.store_key(shuffled, "image", shuffled["label"][:], store.DecodePlan(32), "train") != key
    monkeypatch.setattr(store, "PREPROCESSING_VERSION", store.PREPROCESSING_VERSION + 1)
    assert store.store_key(raw, "image", raw["label"][:], store.DecodePlan(32), "train") != key


def test_a_store_of_another_preprocessing_version_is_refused_and_rebuilt(stores, photo_folder, capsys):
    first = decoded(photo_folder)
    manifest_path = os.path.join(first.store.path, "manifest.json")
    manifest = json.loads(open(manifest_path).read())
    manifest["preprocessing"] -= 1
    open(manifest_path, "w").write(json.dumps(manifest))
    second = decoded(photo_folder, log=print)
    assert second.store.built and "preprocessing version" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "no manifest"])
def test_a_damaged_store_is_detected_and_rebuilt(stores, photo_folder, capsys, damage):
    first = decoded(photo_folder)
    reference = first.pixels[:]
    pixels = os.path.join(first.store.path, "pixels.u8")
    if damage == "truncate":
        os.truncate(pixels, os.path.getsize(pixels) // 2)
    elif damage == "overwrite":  # same size: found by the checksum, which a changed mtime triggers
        time.sleep(0.05)  # past the kernel's coarse timestamp tick, as any later write is
        with open(pixels, "r+b") as handle:
            handle.seek(100)
            handle.write(b"\xff" * 50)
    else:
        os.unlink(os.path.join(first.store.path, "manifest.json"))
    second = decoded(photo_folder, log=print)
    out = capsys.readouterr().out
    assert second.store.built and torch.equal(second.pixels[:], reference)
    assert out.count("\n") == 1 and "rebuilding" in out


def test_a_full_disk_while_building_is_one_line_and_leaves_no_store(tmp_path, photo_folder, monkeypatch):
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        monkeypatch.setenv("HFVISION_CACHE", str(disk))
        with pytest.raises(HfvisionError) as info:
            decoded(photo_folder, size=64)  # 24 x 3 x 64 x 64 = 295 kB > 64 kB
        message = str(info.value)
        assert "\n" not in message and "no space left on device" in message and "HFVISION_CACHE" in message
        left = [p.name for p in (disk / "stores").iterdir()]
        assert all(name.endswith(".lock") for name in left), left  # no store, no staging directory
        monkeypatch.setenv("HFVISION_CACHE", str(tmp_path / "big"))
        assert decoded(photo_folder, size=64).store.built
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_truncated_image_found_while_decoding_is_skipped_or_named(stores, photo_folder):
    victim = sorted(photo_folder.rglob("*.jpg"))[7]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # the header still reads: found only when decoding
    with pytest.raises(HfvisionError, match=str(victim)):
        decoded(photo_folder)
    assert not [p for p in stores.iterdir() if p.is_dir()]
    split = decoded(photo_folder, on_bad_image="skip")
    assert len(split) == 23 and split.skipped[0].startswith(str(victim)) and split.pixels.shape[0] == 23
    clean = sorted(photo_folder.rglob("*.jpg"))
    expected = [images.resize_rgb(images.decode_fitted(p, 32), 32) for p in clean if p != victim]
    assert np.array_equal(split.pixels[:].permute(0, 2, 3, 1).numpy(), np.stack(expected))


def test_stored_pixels_index_like_a_tensor(stores, photo_folder):
    split = decoded(photo_folder)
    whole = split.pixels[:]
    assert torch.equal(split.pixels[5], whole[5]) and torch.equal(split.pixels[-1], whole[-1])
    assert torch.equal(split.pixels[[7, 2, 3, 2]], whole[[7, 2, 3, 2]])
    assert torch.equal(split.pixels[torch.tensor([1, 0])], whole[[1, 0]])
    assert torch.equal(split.pixels[3:9:2], whole[3:9:2])
    with pytest.raises(IndexError):
        split.pixels[[24]]
    batches = list(split.loader(batch_size=10, shuffle=False))
    assert [len(b[0]) for b in batches] == [10, 10, 4] and torch.equal(torch.cat([b[0] for b in batches]), whole)


DISTRIBUTED_READ = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from accelerate import Accelerator
    from hfvision.data import store
    from hfvision.data.sources import decode_split
    from hfvision.data.synthetic import load_synthetic

    read = []
    original = store.StoredPixels.read_rows
    def logged(self, rows):
        read.extend(np.asarray(rows).tolist())
        return original(self, rows)
    store.StoredPixels.read_rows = logged
    accelerator = Accelerator(cpu=True)
    split = decode_split(load_synthetic(128, 8)["train"], "image", "label", 32, split="train")
    loader = accelerator.prepare(split.loader(batch_size=16, shuffle=True))
    labels = [label for _, batch_labels in loader for label in batch_labels.tolist()]
    out = {"built": split.store.built, "read": read, "labels": labels}
    open(os.path.join(sys.argv[1], f"rank{accelerator.process_index}.json"), "w").write(json.dumps(out))
""")


@pytest.mark.slow
def test_two_processes_build_the_store_once_and_read_disjoint_shards_of_the_split(tmp_path, stores):
    (tmp_path / "read.py").write_text(DISTRIBUTED_READ)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), str(tmp_path / "read.py"), str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["built"] for r in ranks) == [False, True]  # one built it, the other waited and reused it
    zero, one = (set(r["read"]) for r in ranks)
    assert not zero & one and zero | one == set(range(128))  # each touched only its own batches; together all
    assert len(ranks[0]["read"]) == len(ranks[1]["read"]) == 64
    assert sorted(ranks[0]["labels"] + ranks[1]["labels"]) == sorted(load_synthetic(128, 8)["train"]["label"][:])


@pytest.mark.parametrize("layout", ["class/file", "split/class/file"])
def test_an_image_folder_is_listed_as_datasets_imagefolder_reads_it(tmp_path, layout):
    from datasets import load_dataset

    root = tmp_path / "folder"
    for split in (["train", "test"] if layout.startswith("split") else [""]):
        for index, picture in enumerate(make_images(6, 16, seed=len(split))[0]):
            folder = root / split / ("cat" if index % 2 else "dog")
            folder.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(picture).save(folder / f"{index}.png")
    (root / ".hidden").write_text("not listed")
    assert image_folder(root) is not None  # listed by hfvision, not by load_dataset
    (root / "README.md").write_text("a file that is not an image: load_dataset reads such a folder")
    assert image_folder(root) is None
    (root / "README.md").unlink()
    listed, reference = images_and_labels(load_raw(str(root))), images_and_labels(load_dataset(str(root)))
    assert listed == reference and set(listed) == ({"train", "test"} if layout.startswith("split") else {"train"})


def images_and_labels(raw):
    return {name: (split.features["label"].names, sorted(
        (value["path"], label) for value, label in zip(split.cast_column("image", Image(decode=False))["image"],
                                                       split["label"])))
            for name, split in raw.items()}


def test_the_recipes_decode_workers_reach_the_store(tmp_path, stores, monkeypatch):
    from conftest import tiny_recipe_overrides

    from hfvision.accelerator import make_accelerator
    from hfvision.models.factory import resolve_input_spec
    from hfvision.pipeline import load_data
    from hfvision.recipe import load_recipe

    processes, original = [], store._pool_map
    monkeypatch.setattr(store, "_pool_map", lambda function, tasks, count: processes.append(count) or original(
        function, tasks, count))
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml",
                         tiny_recipe_overrides(tmp_path / "run", **{"data.decode_workers": 3}))
    data = load_data(recipe, resolve_input_spec(recipe.model, recipe.data), make_accelerator())
    assert set(processes) == {3} and all(split.store.built for split in data.splits().values())
