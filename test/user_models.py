"""A robot integrator's own models, built by the tests: a small colour 32x32 classifier of 4 shapes (the
edge), a wider one (the teacher), trained for a few seconds on generated images, and exported as a user would:
ONNX with BatchNorm kept, TorchScript, ONNX with BatchNorm folded into the convolutions, and broken files."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

LABELS = ("circle", "square", "triangle", "cross")
SIZE = 32


def shapes(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """n RGB images [n,size,size,3] of a shape in a random colour, place and scale on a noisy background."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    labels = rng.integers(0, len(LABELS), n)
    for i, label in enumerate(labels):
        img = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
        color = tuple(int(v) for v in rng.integers(120, 256, 3))
        c = rng.integers(size // 3, 2 * size // 3, 2)
        r = int(rng.integers(size // 6, size // 3))
        if label == 0:
            cv2.circle(img, (int(c[0]), int(c[1])), r, color, -1)
        elif label == 1:
            cv2.rectangle(img, (int(c[0] - r), int(c[1] - r)), (int(c[0] + r), int(c[1] + r)), color, -1)
        elif label == 2:
            pts = np.array([[c[0], c[1] - r], [c[0] - r, c[1] + r], [c[0] + r, c[1] + r]], np.int32)
            cv2.fillPoly(img, [pts], color)
        else:
            cv2.line(img, (int(c[0] - r), int(c[1] - r)), (int(c[0] + r), int(c[1] + r)), color, 3)
            cv2.line(img, (int(c[0] - r), int(c[1] + r)), (int(c[0] + r), int(c[1] - r)), color, 3)
        images[i] = img
    return images, labels


def cnn(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, len(LABELS)))


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def to_input(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def train(width: int, seed: int, steps: int = 150) -> nn.Module:
    torch.manual_seed(seed)
    model = cnn(width)
    images, labels = shapes(2048, seed)
    x, y = to_input(images), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def export_onnx(model: nn.Module, path: Path, fold: bool = False, metadata: dict | None = None,
                dynamic_hw: bool = False) -> Path:
    axes = {"input": {0: "n", 2: "h", 3: "w"} if dynamic_hw else {0: "n"}, "logits": {0: "n"}}
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes=axes, dynamo=False, opset_version=17,
                      do_constant_folding=fold)
    if metadata:
        import onnx

        from eclm_ros.core.model_import import with_metadata

        onnx.save(with_metadata(onnx.load(str(path)), **metadata), str(path))
    return path


def build(root: Path) -> dict[str, Path]:
    """Every file the tests use, written once under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    edge, teacher = train(8, 0), train(24, 1, steps=250)
    files = {"edge_onnx": export_onnx(edge, root / "edge.onnx"),
             "teacher_onnx": export_onnx(teacher, root / "teacher.onnx", metadata={"labels": list(LABELS),
                                                                                   "mean": MEAN, "std": STD}),
             "edge_meta_onnx": export_onnx(edge, root / "edge_meta.onnx", metadata={"labels": list(LABELS),
                                                                                   "mean": MEAN, "std": STD}),
             "folded_onnx": export_onnx(edge, root / "folded.onnx", fold=True),
             "dynamic_onnx": export_onnx(edge, root / "dynamic.onnx", dynamic_hw=True),
             "softmax_onnx": export_onnx(nn.Sequential(edge, nn.Softmax(1)), root / "softmax.onnx"),
             "features_onnx": export_onnx(edge[:3], root / "features.onnx"),
             "labels": root / "labels.txt", "edge_ts": root / "edge.pt", "truncated_onnx": root / "truncated.onnx"}
    files["labels"].write_text("\n".join(LABELS) + "\n")
    torch.jit.save(torch.jit.script(edge), str(files["edge_ts"]), _extra_files={"eclm_ros.json": json.dumps(
        {"input_size": [SIZE, SIZE], "channels": 3, "labels": list(LABELS), "mean": MEAN, "std": STD})})
    files["truncated_onnx"].write_bytes(files["edge_onnx"].read_bytes()[:1000])
    return files


def write_image_folder(root: Path, train: int = 320, test: int = 160, size: int = 40) -> Path:
    """The shapes as a user's data folder: root/train/<label>/*.png and root/test/<label>/*.png."""
    for split, n, seed in (("train", train, 1), ("test", test, 2)):
        images, labels = shapes(n, seed, size)
        for label in LABELS:
            (root / split / label).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels)):
            cv2.imwrite(str(root / split / LABELS[label] / f"{i:04d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root
