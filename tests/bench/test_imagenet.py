"""The image-folder tasks (ImageNet, Tiny-ImageNet) on fake folders of small JPEGs written here,
their models, the GPU training options and the GPU check script (on CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoptim.bench import data, tasks
from geoptim.bench.models import (
    Accelerated,
    DigitsResNet,
    accelerate,
    count_params,
    imagenet_model,
    vgg11,
)
from geoptim.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["n02", "n01", "n03"]  # written unsorted: class i is the i-th sorted name


def _folder(root: Path, tiny_val: bool = False, per_class: int = 4) -> Path:
    return data.write_image_folder(root, CLASSES, per_class=per_class, tiny_val=tiny_val)


def _transform(size: int = 16) -> data.ImageTransform:
    return data.ImageTransform(size, crop_ratio=1.0)


# ---------------------------------------------------------------- the folder layouts


def test_scan_labels_images_by_their_class_folder(tmp_path: Path) -> None:
    _folder(tmp_path)
    classes, train, test = data.scan_image_folder(str(tmp_path))
    assert classes == ("n01", "n02", "n03")
    assert len(train) == 12 and len(test) == 6
    for path, label in (*train, *test):
        assert path.split("/")[1] == classes[label]  # train/<class>/... and val/<class>/...


def test_scan_reads_tiny_imagenet_val_annotations(tmp_path: Path) -> None:
    _folder(tmp_path, tiny_val=True)
    (tmp_path / "train" / "n01" / "images").mkdir()  # Tiny-ImageNet nests train images
    (tmp_path / "train" / "n01" / "n01_0.JPEG").rename(tmp_path / "train/n01/images/n01_0.JPEG")
    classes, train, test = data.scan_image_folder(str(tmp_path))
    assert ("train/n01/images/n01_0.JPEG", 0) in train and len(train) == 12
    annotated = {
        line.split("\t")[0]: line.split("\t")[1]
        for line in (tmp_path / "val" / "val_annotations.txt").read_text().splitlines()
    }
    assert len(test) == len(annotated) == 6
    for path, label in test:
        assert path.startswith("val/images/") and classes[label] == annotated[Path(path).name]


def test_scan_errors_name_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train/<class>/\*\.JPEG"):
        data.scan_image_folder(str(tmp_path / "nowhere"))
    _folder(tmp_path / "bad", tiny_val=True)
    (tmp_path / "bad" / "val" / "val_annotations.txt").write_text("x.JPEG\tn99\n")
    with pytest.raises(ValueError, match="line 1"):
        data.scan_image_folder(str(tmp_path / "bad"))


# ---------------------------------------------------------------- transforms


def test_resize_center_crop_keeps_the_centre() -> None:
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, 32:] = 255  # left half black, right half white
    out = np.asarray(data.resize_center_crop(Image.fromarray(pixels), 16, crop_ratio=1.0))
    assert out.shape == (16, 16, 3)  # 64x32 -> 32x16 -> the central 16x16: columns 8..24
    assert out[:, :7].max() < 10 and out[:, 9:].min() > 245


def test_random_resized_crop_size_and_seeding() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    crops = [
        np.asarray(data.random_resized_crop(image, 24, np.random.default_rng(seed)))
        for seed in (1, 1, 2)
    ]
    assert crops[0].shape == (24, 24, 3)
    assert np.array_equal(crops[0], crops[1]) and not np.array_equal(crops[0], crops[2])


# ---------------------------------------------------------------- FolderData


def _data(root: Path, seed: int = 0, workers: int = 0) -> data.FolderData:
    return data.FolderData(
        root, _transform(), batch_size=4, seed=seed, n_val=2, workers=workers, eval_train_size=4
    )


def test_batches_shapes_and_labels(tmp_path: Path) -> None:
    folder = _data(_folder(tmp_path))
    assert folder.steps_per_epoch == 3  # 12 images, 2 held out, batches of 4
    batches = list(folder.train_batches(0))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert all(x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 for x, _ in batches)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(l for _, l in folder.train)
    assert not set(folder.val) & set(folder.train) and len(folder.val) == 2
    assert folder.val == _data(tmp_path, seed=5).val  # the held-out split ignores the run seed
    assert len({label for _, label in folder.train[:4]}) > 1  # train_* is not one class's images


def test_batches_are_a_function_of_seed_and_epoch(tmp_path: Path) -> None:
    _folder(tmp_path)

    def epoch(seed: int, number: int, workers: int = 0) -> list[torch.Tensor]:
        return [x for x, _ in _data(tmp_path, seed, workers).train_batches(number)]

    first = epoch(0, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0, 0, workers=2), strict=True))
    assert not torch.equal(first[0], epoch(0, 1)[0])
    assert not torch.equal(first[0], epoch(1, 0)[0])


def test_evaluate_and_hash(tmp_path: Path) -> None:
    folder = _data(_folder(tmp_path))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    metrics = folder.evaluate(model)
    assert set(metrics) == {f"{s}_{m}" for s in ("train", "val", "test") for m in ("loss", "acc")}
    assert folder.hessian_batch(3)[0].shape == (3, 3, 16, 16)
    assert folder.data_hash() == _data(tmp_path, seed=3).data_hash()
    other = tmp_path / "other"
    data.write_image_folder(other, CLASSES, per_class=5)
    assert _data(other).data_hash() != folder.data_hash()


# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet50", 25_557_032), ("resnet101", 44_549_160), ("vgg11", 132_868_840)],
)
def test_imagenet_param_counts(name: str, expected: int) -> None:
    with torch.device("meta"):
        assert count_params(imagenet_model(name)) == expected


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
def test_imagenet_resnet_forward(name: str) -> None:
    assert imagenet_model(name, 7)(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_imagenet_vgg_forward_shape() -> None:
    with torch.device("meta"):  # 133M parameters: the shapes only
        assert imagenet_model("vgg11")(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
    with pytest.raises(ValueError, match="unknown ImageNet model"):
        imagenet_model("resnet18")


def test_tiny_imagenet_models_forward() -> None:
    for name in ("resnet18", "vgg11"):
        task = tasks.get_task("tinyimagenet", model=name)
        assert task.make_model(0)(torch.randn(2, 3, 64, 64)).shape == (2, 200)
    assert count_params(vgg11(200, spatial=64)) == count_params(vgg11(200)) + 512 * 3 * 200


# ---------------------------------------------------------------- the tasks


@pytest.mark.parametrize(("name", "model"), [("imagenet", "resnet50"), ("tinyimagenet", "vgg11")])
def test_task_runs_on_its_stand_in(tmp_path: Path, name: str, model: str) -> None:
    overrides = tasks.get_task(name).write_stand_in(tmp_path)
    task = tasks.get_task(name, model=model, amp="bf16", channels_last=True, **overrides)
    result = task.run("lpsgdm", {"lr": 1e-3, "p_max": 6}, 0, {"epochs": 1})
    assert result["steps"] == 1 and not result["extra"]["diverged"]
    assert np.isfinite(result["final"]["test_loss"]) and "val_acc" in result["final"]
    expected = count_params(task._network())
    assert result["extra"]["num_params"] == expected


def test_missing_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--task", "imagenet", "--task-option", f"data_dir={tmp_path / 'x'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("geoptim: error: image folder not found") and err.count("\n") == 1


def test_geoptim_train_on_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    overrides = tasks.get_task("tinyimagenet").write_stand_in(tmp_path / "data")
    options = [f"{key}={value}" for key, value in {**overrides, "amp": "bf16"}.items()]
    argv = ["train", "--task", "tinyimagenet", "--optimizer", "lion", "--lr", "1e-4"]
    for option in (*options, "device=cpu", "channels_last=true"):
        argv += ["--task-option", option]
    assert main(argv) == 0
    assert "test_acc=" in capsys.readouterr().out


def test_fsdp2_refuses_channels_last(capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--task", "cifar10", "--task-option", "channels_last=true"]
    assert main([*argv, "--distributed", "fsdp2"]) == 2
    assert "channels_last=true does not work with --distributed fsdp2" in capsys.readouterr().err


# ---------------------------------------------------------------- GPU options


def test_accelerate_off_is_the_model_itself() -> None:
    net = DigitsResNet(width=4)
    assert accelerate(net) is net


def test_bf16_autocast_and_channels_last_on_cpu() -> None:
    torch.manual_seed(0)
    net = DigitsResNet(width=8).eval()
    x = torch.randn(4, 1, 8, 8)
    reference = net(x)
    fast = Accelerated(net, amp="bf16", channels_last=True)
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=0.1, atol=0.1)  # bf16 has 8 mantissa bits
    assert not torch.equal(out, reference)  # the autocast did run in bf16
    conv = net.layers[0].conv1.weight  # 8 -> 8 channels: the two layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@pytest.mark.slow
def test_compile_option_trains() -> None:
    task = tasks.get_task("cifar10", compile=True, model="resnet18")
    model = task.make_model(0)
    assert count_params(model) == 11_173_962
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)


def test_gpu_check_script_runs_on_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "table.md"
    chosen = ["sgdm", "lpsgdm", "adamw_agr"]  # the p schedule and AGR; all: ~10 CPU-s more
    argv = ["--device", "cpu", "--steps", "2", "--warmup", "0", "--batch", "2", "--out", str(out)]
    assert module.main([*argv, "--optimizers", *chosen]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0][2:] for row in rows[2:]] == chosen
    assert set(chosen) < set(module.OPTIMIZERS)
