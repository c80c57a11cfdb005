"""Image datasets: Tiny ImageNet layout, image folders, saved datasets, broken files."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import data_dir, write_colour_images
from tunelab.core.config import DataConfig
from tunelab.core.errors import DataError
from tunelab.data.image_pipeline import ClipPreprocess, image_loader
from tunelab.data.images import is_image_dataset, load_image_dataset
from tunelab.models.architectures import clip_image_processor


@pytest.fixture(scope="module")
def tiny_imagenet():
    if not (data_dir() / "tiny-imagenet-200" / "wnids.txt").is_file():
        pytest.skip("../shared/data/tiny-imagenet-200 is not present")
    return load_image_dataset(DataConfig(dataset="tiny_imagenet"))


def test_tiny_imagenet_layout(tiny_imagenet):
    assert tiny_imagenet.label_space.num_classes == 200
    assert {k: len(v) for k, v in tiny_imagenet.splits.items()} == {"train": 20000, "validation": 10000}
    values, names = tiny_imagenet.label_space.values, tiny_imagenet.class_names
    assert values == tuple(sorted(values))  # indices follow sorted wnids
    assert names[values.index("n01443537")] == "goldfish"  # first name in words.txt
    validation = tiny_imagenet.splits["validation"]
    assert validation.ids[0] == "val/images/val_0.JPEG"
    assert np.bincount(validation.labels, minlength=200).tolist() == [50] * 200
    assert is_image_dataset("tiny_imagenet")


def test_tiny_imagenet_caps_and_lazy_loading(tiny_imagenet):
    capped = load_image_dataset(DataConfig(dataset="tiny_imagenet", max_train_samples=400, max_eval_samples=200))
    assert len(capped.splits["train"]) == 400 and len(capped.splits["validation"]) == 200
    assert np.bincount(capped.splits["validation"].labels, minlength=200).max() == 1
    batch = next(iter(image_loader(capped.splits["validation"], ClipPreprocess(clip_image_processor(32)), 8, 0)))
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["skipped"] == []


def test_flat_folder_is_split_for_training_and_whole_for_zeroshot(tmp_path):
    write_colour_images(tmp_path / "flat", 10)
    (tmp_path / "flat" / "red").rename(tmp_path / "flat" / "dark_red")
    training = load_image_dataset(DataConfig(dataset=str(tmp_path / "flat")), flat_split="all")
    assert {k: len(v) for k, v in training.splits.items()} == {"train": 24, "validation": 3, "test": 3}
    assert training.class_names == ["blue", "dark red", "green"]  # '_' read as a space
    zeroshot = load_image_dataset(DataConfig(dataset=str(tmp_path / "flat")), flat_split="test")
    assert list(zeroshot.splits) == ["test"] and len(zeroshot.splits["test"]) == 30


def test_split_folders(colour_folder):
    ds = load_image_dataset(DataConfig(dataset=str(colour_folder)))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 72, "validation": 24, "test": 24}
    assert ds.splits["test"].ids[0] == "test/blue/blue_0.png"


def test_grey_and_rgba_images_become_rgb(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir(parents=True)
    Image.new("L", (20, 30), 128).save(tmp_path / "d" / "a" / "grey.png")
    Image.new("RGBA", (30, 20), (1, 2, 3, 4)).save(tmp_path / "d" / "b" / "rgba.png")
    ds = load_image_dataset(DataConfig(dataset=str(tmp_path / "d")), flat_split="test")
    split = ds.splits["test"]
    assert [split.load(i).mode for i in range(2)] == ["RGB", "RGB"]


def write_broken(folder):
    (folder / "red").mkdir(parents=True, exist_ok=True)
    (folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_corrupt_image_is_skipped_or_stops_with_strict(tmp_path):
    write_colour_images(tmp_path / "d", 3)
    write_broken(tmp_path / "d")
    split = load_image_dataset(DataConfig(dataset=str(tmp_path / "d")), flat_split="test").splits["test"]
    preprocess = ClipPreprocess(clip_image_processor(32))
    batches = list(image_loader(split, preprocess, 4, 0))
    skipped = [split.ids[row] for b in batches for row in b["skipped"]]
    assert skipped == ["red/broken.png"]
    assert sum(len(b["rows"]) for b in batches) == 9
    with pytest.raises(DataError, match="cannot read image red/broken.png"):
        list(image_loader(split, preprocess, 4, 0, strict=True))


def test_saved_dataset_with_image_column(tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(12)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["cat", "dog"])})
    Dataset.from_dict({"image": images, "label": [i % 2 for i in range(12)]}, features=features) \
        .save_to_disk(str(tmp_path / "saved"))
    assert is_image_dataset(str(tmp_path / "saved"))
    ds = load_image_dataset(DataConfig(dataset=str(tmp_path / "saved")))
    assert ds.class_names == ["cat", "dog"] and set(ds.splits) == {"train", "validation", "test"}
    assert ds.splits["train"].load(0).size == (8, 8)


def test_text_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match="is a text dataset; this command needs images"):
        load_image_dataset(DataConfig(dataset="rotten_tomatoes"))


def test_empty_folder(tmp_path):
    (tmp_path / "e" / "cls").mkdir(parents=True)
    (tmp_path / "e" / "cls" / "x.jpg").write_bytes(b"")
    (tmp_path / "e" / "other").mkdir()
    with pytest.raises(DataError, match="single class"):
        load_image_dataset(DataConfig(dataset=str(tmp_path / "e")))


def test_saved_dataset_with_wordnet_labels_reads_class_names(tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    if not (data_dir() / "tiny-imagenet-200" / "words.txt").is_file():
        pytest.skip("tiny-imagenet-200 not present")
    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(8)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["n01443537", "n01629819"])})
    Dataset.from_dict({"image": images, "label": [i % 2 for i in range(8)]}, features=features) \
        .save_to_disk(str(tmp_path / "saved"))
    ds = load_image_dataset(DataConfig(dataset=str(tmp_path / "saved")))
    assert ds.class_names == ["goldfish", "European fire salamander"]


@pytest.mark.parametrize("mode,size", [("RGB", (64, 64)), ("RGB", (75, 41)), ("L", (30, 52)), ("RGBA", (33, 33)),
                                       ("P", (90, 60))])
def test_deferred_normalisation_gives_the_processors_pixels(mode, size):
    """Workers hand over uint8 (a quarter of the bytes); normalised where the model is,
    the pixels are the processor's own, whatever the image's size or mode."""
    torch = pytest.importorskip("torch")
    processor = clip_image_processor()
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    preprocess = ClipPreprocess(processor)
    raw = preprocess(image)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 224, 224)
    expected = processor(images=image, return_tensors="pt")["pixel_values"]
    got = preprocess.model_input(raw[None], "cpu")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert preprocess.model_input(raw[None], "cpu", torch.bfloat16).dtype == torch.bfloat16


def test_processors_without_rgb_conversion_keep_their_own_path():
    torch = pytest.importorskip("torch")
    processor = clip_image_processor(32)
    processor.do_convert_rgb = False
    preprocess = ClipPreprocess(processor)
    image = Image.new("RGB", (40, 40), (200, 10, 10))
    pixels = preprocess(image)
    assert pixels.dtype == torch.float32
    torch.testing.assert_close(preprocess.model_input(pixels[None], "cpu"),
                               processor(images=image, return_tensors="pt")["pixel_values"])


def test_direct_resize_and_crop_gives_the_processors_uint8_pixels():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for processor in (clip_image_processor(), clip_image_processor(32)):
        preprocess = ClipPreprocess(processor)
        assert preprocess.geometry is not None
        for w, h in [(64, 64), (75, 41), (41, 75), (500, 375), (225, 224), (223, 301), (17, 9), (1, 40)]:
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            expected = processor(images=image, do_rescale=False, do_normalize=False,
                                 return_tensors="np")["pixel_values"][0]
            got = preprocess(image)
            assert got.dtype == torch.uint8
            np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"{w}x{h}")


def test_resizing_where_the_model_is_gives_the_processors_pixels(tmp_path):
    """On a GPU the workers only decode; the device resizes (Pillow's arithmetic) and
    crops. Same pixels as the processor, for batches of one size and of mixed sizes."""
    torch = pytest.importorskip("torch")
    from tunelab.data.image_pipeline import collate_images

    processor = clip_image_processor()
    preprocess = ClipPreprocess(processor, resize_on_device=True)
    assert preprocess.resize_on_device
    assert ClipPreprocess.for_device(processor, torch.device("cuda")).resize_on_device
    assert not ClipPreprocess.for_device(processor, torch.device("cpu")).resize_on_device
    assert ClipPreprocess.for_device(processor, "cuda:1").resize_on_device
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
              [(64, 64), (64, 64), (75, 41), (300, 200)]]
    images.append(Image.fromarray(rng.integers(0, 256, (50, 60, 4), dtype=np.uint8), "RGBA"))
    raw = [preprocess(image) for image in images]
    assert raw[2].dtype == torch.uint8 and raw[2].shape == (3, 41, 75)  # decoded, not resized
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    same_size = collate_images([(i, raw[i], 0) for i in range(2)])["pixel_values"]
    assert isinstance(same_size, torch.Tensor)
    torch.testing.assert_close(preprocess.model_input(same_size, "cpu"), expected[:2], rtol=0, atol=1e-6)
    mixed = collate_images([(i, pixels, 0) for i, pixels in enumerate(raw)])["pixel_values"]
    assert isinstance(mixed, list)
    torch.testing.assert_close(preprocess.model_input(mixed, "cpu"), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- tables of image files and labels


def write_image_table(root, per_class: int = 8):
    """train.jsonl / test.csv naming colour images with label sets: each image is its
    colour, and 'warm' too when red."""
    from tests.conftest import write_colour_images

    write_colour_images(root / "images", per_class, seed=5)
    rows = [{"file": f"images/{colour}/{colour}_{i}.png",
             "labels": [colour, "warm"] if colour == "red" else [colour]}
            for colour in ("red", "green", "blue") for i in range(per_class)]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[::2] + rows[1::4]) + "\n")
    with open(root / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "labels"])
        writer.writerows((r["file"], ";".join(r["labels"])) for r in rows[3::4])
    return root


def test_image_table_holds_label_sets(tmp_path):
    from tunelab.core.config import DataConfig
    from tunelab.data.images import is_image_dataset, load_image_dataset

    root = write_image_table(tmp_path / "table")
    assert is_image_dataset(str(root))
    data = load_image_dataset(DataConfig(dataset=str(root), label_separator=";"), seed=0)
    assert data.problem == "multi-label" and data.class_names == ["blue", "green", "red", "warm"]
    train = data.splits["train"]
    red = [i for i, name in enumerate(train.ids) if "/red/" in name]
    assert red and all(train.labels[i].tolist() == [0, 0, 1, 1] for i in red)
    assert train.load(0).mode == "RGB" and set(data.splits) == {"train", "validation", "test"}
    assert len(data.splits["test"]) == 6  # the test file's own rows, split by their separator


def test_image_table_errors(tmp_path, tiny_clip_dir, capsys):
    from tunelab.cli import main

    root = write_image_table(tmp_path / "table")
    (root / "images" / "red" / "red_0.png").unlink()
    assert main(["probe", "--dataset", str(root), "--model", str(tiny_clip_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.jsonl: 1 train row has no image file: row 1 (images/red/red_0.png)" in err, err
    assert len(err.splitlines()) == 1


def test_multi_label_images_through_the_probe_and_refused_by_single_label_methods(tmp_path, tiny_clip_dir,
                                                                                   capsys):
    from tests.conftest import metrics_of
    from tunelab.cli import main

    root = write_image_table(tmp_path / "table")
    out = tmp_path / "probe"
    assert main(["probe", "--dataset", str(root), "--model", str(tiny_clip_dir), "--label-separator", ";",
                 "--out", str(out), "--precision", "fp32"]) == 0
    metrics = metrics_of(out)
    assert metrics["data"]["problem"] == "multi-label" and "f1_micro" in metrics["splits"]["test"]
    rows = list(csv.DictReader(open(out / "predictions" / "test.csv", newline="")))
    assert len(rows) == 6 and rows[0]["file"].startswith("images/")
    capsys.readouterr()
    assert main(["clip-finetune", "--dataset", str(root), "--model", str(tiny_clip_dir), "--label-separator", ";",
                 "--out", str(tmp_path / "cf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds label sets; CLIP's softmax picks one class per image: use a SigLIP model" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "cf").exists()


def test_label_set_flags_on_class_folders_stop(colour_folder, tiny_clip_dir, capsys):
    from tunelab.cli import main

    for flag in (["--label-separator", ";"], ["--problem", "multi-label"], ["--threshold", "0.3"]):
        assert main(["probe", "--dataset", str(colour_folder), "--model", str(tiny_clip_dir), *flag]) == 2
        err = capsys.readouterr().err.strip()
        assert "class folders give one class per image" in err and len(err.splitlines()) == 1, err
