"""CEMA's distillation: it moves only the student's affine parameters, and it moves them towards the teacher.

Asserted on what distillation optimises, agreement with the teacher on held-out frames of the same environment
(the teacher held fixed), with a margin that held for quick models trained with three different seeds: never
on one lucky accuracy figure (quick models' numerics differ from one CPU to the next). KL(teacher || student)
is not asserted: the entropy term makes the student sharper than the teacher, and for one seed of three the
held-out KL rose (0.066 -> 0.081) while agreement rose by 0.12."""
import numpy as np
import pytest
import torch

from eclm_ros.core.distill import DistillConfig, Distiller
from eclm_ros.core.norm import affine_params, affine_state, use_batch_stats
from eclm_ros.core.tensor_codec import pack
from eclm_ros.sim.corruptions import corrupt
from eclm_ros.sim.data import load_fashion_mnist


@pytest.fixture(scope="module")
def corrupted():
    x, _ = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    return np.stack([corrupt(i, "contrast", 5, rng) for i in x[:768]])


@torch.no_grad()
def _agreement(teacher, student, x) -> float:
    return float((use_batch_stats(teacher)(x).argmax(1) == use_batch_stats(student)(x).argmax(1)).float().mean())


def test_distillation_changes_only_affine_and_moves_the_student_to_the_teacher(quick_model, to_tensor, corrupted):
    torch.manual_seed(0)
    teacher, student = quick_model("cloud").model, quick_model("edge").model
    before_params = {k: v.clone() for k, v in student.named_parameters()}
    distiller = Distiller(teacher, student, 10, to_tensor, DistillConfig(replay_min=10_000, adapt_teacher=False),
                          seed=0)
    held_out = to_tensor(corrupted[512:])
    agree_before = _agreement(distiller.teacher, distiller.student, held_out)
    for _ in range(4):
        for i in range(0, 512, 64):
            distiller.add(corrupted[i:i + 64])
            state = distiller.step()
    changed = {k for k, v in distiller.student.named_parameters() if not torch.equal(before_params[k], v)}
    assert changed and changed <= set(affine_params(student))
    assert set(state) == set(affine_params(student))
    agree_after = _agreement(distiller.teacher, distiller.student, held_out)
    assert agree_after > agree_before + 0.05, (agree_before, agree_after)  # measured +0.12 to +0.24, seeds 0-2


def test_update_payload_is_tiny(quick_model):
    edge = quick_model("edge").model
    update = pack(affine_state(edge), encoding="fp16").wire_size
    full = pack(edge.state_dict()).wire_size
    assert update < 0.1 * full


def test_no_data_no_update(quick_model, to_tensor):
    d = Distiller(quick_model("cloud").model, quick_model("edge").model, 10, to_tensor)
    assert d.step() is None
