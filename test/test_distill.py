import numpy as np
import pytest
import torch

from eclm_ros.core.corruptions import corrupt
from eclm_ros.core.data import load_fashion_mnist
from eclm_ros.core.distill import DistillConfig, Distiller
from eclm_ros.core.norm import affine_params, affine_state, load_affine, use_batch_stats
from eclm_ros.core.preprocess import batch_to_tensor
from eclm_ros.core.tensor_codec import pack
from eclm_ros.core.training import load_checkpoint, load_edge_model


@pytest.fixture
def corrupted():
    x, y = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    imgs = np.stack([corrupt(i, "contrast", 5, rng) for i in x[:768]])
    return imgs, y[:768]


def _acc(model, imgs, labels):
    with torch.no_grad():
        return float((model(batch_to_tensor(imgs)).argmax(1).numpy() == labels).mean())


def test_distillation_changes_only_affine_and_helps(quick_cache, corrupted):
    torch.manual_seed(0)
    imgs, labels = corrupted
    teacher = load_checkpoint("cloud", quick=True, cache_dir=quick_cache)
    student = load_edge_model(quick=True, cache_dir=quick_cache)
    edge = use_batch_stats(load_edge_model(quick=True, cache_dir=quick_cache))
    before_params = {k: v.clone() for k, v in student.named_parameters()}
    before = _acc(edge, imgs[512:], labels[512:])
    distiller = Distiller(teacher, student, 10, DistillConfig(replay_min=10_000), seed=0)
    for epoch in range(4):
        for i in range(0, 512, 64):
            distiller.add(imgs[i:i + 64])
            state = distiller.step()
    changed = {k for k, v in student.named_parameters() if not torch.equal(before_params[k], v)}
    assert changed and changed <= set(affine_params(student))
    load_affine(edge, state)
    assert _acc(edge, imgs[512:], labels[512:]) > before  # held-out corrupted frames


def test_update_payload_is_tiny(quick_cache):
    edge = load_edge_model(quick=True, cache_dir=quick_cache)
    update = pack(affine_state(edge), encoding="fp16").wire_size
    full = pack(edge.state_dict()).wire_size
    assert update < 0.1 * full


def test_no_data_no_update(quick_cache):
    d = Distiller(load_checkpoint("cloud", quick=True, cache_dir=quick_cache),
                  load_edge_model(quick=True, cache_dir=quick_cache), 10)
    assert d.step() is None
