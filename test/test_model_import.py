"""A user's own model (ONNX, TorchScript) served, adapted and taught like the default one: the import checks
(labels, input, folded normalisation, broken files), the adaptive runtime agreeing with ONNX Runtime on the
user's own file, the cloud distilling into it with a teacher of another size (in-memory system), and
``eclm-ros check-model``."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from user_models import LABELS, MEAN, STD, shapes, to_input

from eclm_ros.core.checkpoint import ModelFileError
from eclm_ros.core.coordinator import Coordinator, CoordinatorConfig
from eclm_ros.core.edge_agent import EdgeAgent, EdgeConfig
from eclm_ros.core.edge_runtime import make_runtime
from eclm_ros.core.model_import import InputSpec, ModelImportError, adaptable_summary, import_model, load_model
from eclm_ros.core.norm import affine_state, load_affine
from eclm_ros.core.strategies import make_strategy
from eclm_ros.core.transport import InMemoryNetwork, SimClock


def _original(path, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime answers on the user's own file, frame by frame."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def test_an_onnx_model_is_described_from_its_file_and_labels_and_served_as_the_file_answers(user_models):
    ckpt = import_model(user_models["edge_onnx"], InputSpec(str(user_models["labels"]), MEAN, STD))
    d = ckpt.description
    assert (d.input_size, d.channels, d.labels, d.mean, d.std) == ((32, 32), 3, LABELS, MEAN, STD)
    assert d.architecture is None and ckpt.manifest["format"] == "onnx" and ckpt.manifest["norm_layers"] == 3
    images, labels = shapes(64, 11)
    x = to_input(images).numpy()
    logits = _original(user_models["edge_onnx"], x)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    runtime = make_runtime("onnx", ckpt.model, 1e-6, 1, d.input_shape(), shift_threshold=0)  # statistics all but frozen
    served = np.concatenate([runtime.infer(x[i:i + 1]) for i in range(len(x))])
    assert np.abs(served - expected).max() < 1e-4
    assert (served.argmax(1) == labels).mean() > 0.8  # a working classifier, not a random graph


def test_metadata_describes_the_model_and_parameters_override_it(user_models):
    d = import_model(user_models["edge_meta_onnx"]).description
    assert (d.labels, d.mean, d.std) == (LABELS, MEAN, STD)
    other = user_models["labels"].parent / "other_labels.txt"
    other.write_text("a\nb\nc\nd\n")
    d = import_model(user_models["edge_meta_onnx"], InputSpec(str(other), (0.4,), (0.2,))).description
    assert (d.labels, d.mean, d.std) == (("a", "b", "c", "d"), (0.4,) * 3, (0.2,) * 3)
    assert import_model(user_models["edge_onnx"]).description.labels == ("0", "1", "2", "3")  # class indices


def test_torchscript_and_a_softmax_ending_onnx_serve_the_same_predictions(user_models):
    ts = import_model(user_models["edge_ts"])
    assert ts.manifest["format"] == "torchscript" and ts.description.labels == LABELS
    soft = import_model(user_models["softmax_onnx"], InputSpec(str(user_models["labels"]), MEAN, STD))
    assert soft.manifest["outputs_probabilities"]  # served as logits: the distiller and the runtime want them
    plain = import_model(user_models["edge_onnx"], InputSpec(str(user_models["labels"]), MEAN, STD))
    x = to_input(shapes(16, 3)[0])
    with torch.no_grad():
        reference = plain.model(x)
        for other in (ts, soft):
            assert torch.allclose(other.model(x), reference, atol=1e-4)


def test_a_folded_model_is_refused_with_how_to_export_it_and_serves_unadapted_when_asked(user_models):
    with pytest.raises(ModelImportError, match="do_constant_folding=False.*allow_unadaptable"):
        import_model(user_models["folded_onnx"])
    ckpt = import_model(user_models["folded_onnx"], InputSpec(allow_unadaptable=True))
    runtime = make_runtime("onnx", ckpt.model, input_shape=ckpt.description.input_shape())
    x = to_input(shapes(4, 5)[0]).numpy()
    logits = _original(user_models["folded_onnx"], x)
    np.testing.assert_allclose(np.concatenate([runtime.infer(x[i:i + 1]) for i in range(4)]),
                               np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-5)
    assert runtime.affine_templates() == {} and adaptable_summary(ckpt.model)["affine_params"] == 0


@pytest.mark.parametrize("name,spec,match", [
    ("missing", InputSpec(), "no model file"),
    ("truncated_onnx", InputSpec(), "not a readable ONNX model.*export it again"),
    ("features_onnx", InputSpec(), "not a classifier"),
    ("dynamic_onnx", InputSpec(), "dynamic shape.*fixed"),
    ("edge_onnx", InputSpec(labels_path="three"), "3 labels.*4 classes"),
    ("edge_onnx", InputSpec(labels_path="nowhere.txt"), "cannot be read"),
    ("edge_onnx", InputSpec(mean=(0.1, 0.2)), "needs 1 or 3 values"),
])
def test_a_file_that_cannot_serve_is_refused_naming_the_file_and_the_fix(user_models, name, spec, match):
    path = user_models.get(name, user_models["edge_onnx"].parent / "missing.onnx")
    if spec.labels_path == "three":
        three = path.parent / "three.txt"
        three.write_text("a\nb\nc\n")
        spec = InputSpec(labels_path=str(three))
    with pytest.raises(ModelFileError, match=match) as err:  # ModelImportError, or the checkpoint loader's own
        load_model(path, spec)
    assert path.name in str(err.value) or "nowhere" in str(err.value)


def test_a_torchscript_model_without_its_input_says_which_parameters_to_set(user_models, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.load(str(user_models["edge_ts"])), str(bare))
    with pytest.raises(ModelImportError, match="input_size.*input_channels"):
        import_model(bare)
    assert import_model(bare, InputSpec(input_size=(32, 32), channels=3)).description.input_size == (32, 32)


def _in_memory(strategy, student, frames):
    """The in-memory system, one edge serving ``student`` at 30 Hz over ``frames``: (coordinator, edge agent,
    its runtime, the model version each frame was served with)."""
    clock = SimClock()
    net = InMemoryNetwork(clock)
    cloud = Coordinator(strategy, net.cloud_link(), CoordinatorConfig(), clock=clock)
    net.serve(cloud)
    runtime = make_runtime("onnx", student.model, input_shape=student.description.input_shape())
    agent = EdgeAgent(runtime, student.description, net.connect("robot1"),
                      EdgeConfig(edge_id="robot1", upload_batch=8, upload_ratio=0.5), clock=clock, threaded=False)
    net.attach("robot1", agent)
    versions = []
    for img in frames:
        clock.advance(1 / 30)
        net.deliver()
        cloud.process()
        net.deliver()
        agent.tick()
        versions.append(agent.on_frame(img).model_version)
    return cloud, agent, runtime, versions


def test_the_cloud_distils_a_teacher_of_another_size_into_the_users_edge_model(user_models):
    """The in-memory system with the user's files: the coordinator says it distils only (no composition for a
    model it does not know), registers the edge with the file's own weights, and its affine updates change
    what the edge predicts on shifted frames."""
    spec = InputSpec(str(user_models["labels"]), MEAN, STD)
    student = import_model(user_models["edge_onnx"], spec)
    teacher = import_model(user_models["teacher_onnx"])
    strategy = make_strategy("eclm_ros", teacher, student)
    assert strategy.summary.startswith("distillation only")
    images, _ = shapes(600, 21)
    dark = (images.astype(np.float32) * 0.35 + 20).astype(np.uint8)  # night: low light and contrast
    cloud, agent, runtime, versions = _in_memory(strategy, student, dark)
    assert agent.counters["rejected_updates"] == 0 and agent.spec == ""
    assert versions[-1] >= 3 and cloud.counters["updates"] >= 3, (versions[-1], cloud.counters)
    assert any(h.values.get("strategy", "").startswith("distillation only") for h in cloud.health())
    original = import_model(user_models["edge_onnx"], spec).model
    adapted = import_model(user_models["edge_onnx"], spec).model
    load_affine(adapted, affine_state(runtime.model))  # what the edge serves now, without its statistics
    x = to_input(dark[:200])
    with torch.no_grad():
        before, after = original(x).softmax(1), adapted(x).softmax(1)
    change = float((before - after).abs().max())
    print(f"versions {versions[-1]}, largest probability change {change:.3f}")
    assert change > 0.05, "the distilled affine parameters did not change a prediction"


def test_a_users_edge_model_of_a_known_architecture_takes_the_clouds_updates_and_labelled_views(quick_model):
    """A model the user trained with eclm_ros (a registered architecture, not the cloud's sub-model): the cloud
    names it on the wire as the edge does, so every update applies (the cloud used to send no structure and the
    edge refused each one), and the student learns on the teacher's labelled calibration views as a sub-model
    would; a teacher with no views, or views of another shape, teaches without them and says why."""
    from dataclasses import replace

    from eclm_ros.sim.corruptions import corrupt
    from eclm_ros.sim.data import load_fashion_mnist

    teacher, student = quick_model("cloud"), quick_model("edge_tiny")
    assert student.description.architecture is not None
    strategy = make_strategy("distil", teacher, student)
    assert strategy.engine.source is not None and "labelled views restyled" in strategy.summary
    rng = np.random.default_rng(0)
    cloud, agent, _, versions = _in_memory(strategy, student,
                                           [corrupt(img, "fog", 5, rng) for img in load_fashion_mnist("test")[0][:400]])
    assert agent.counters["rejected_updates"] == 0, agent.health()
    assert agent.spec == strategy.served_spec("robot1") != ""
    assert versions[-1] >= 3 and cloud.counters["updates"] >= 3, (versions[-1], cloud.counters)

    for views in (None, teacher.calibration[:0]):
        bare = make_strategy("distil", replace(teacher, calibration=views), student)
        assert bare.engine.source is None and "carries no calibration views" in bare.summary
    wide = replace(student, description=replace(student.description, input_size=(32, 32)))
    other = make_strategy("distil", teacher, wide)
    assert other.engine.source is None and "resized views would restyle wrongly" in other.summary


def test_check_model_reports_what_a_file_gives_and_exits_non_zero_naming_the_fix(user_models, capsys):
    from eclm_ros.cli import main

    labels = str(user_models["labels"])
    assert main(["check-model", str(user_models["edge_onnx"]), "--labels", labels, "--frames", "20"]) == 0
    out = capsys.readouterr().out
    assert "4: circle, square, triangle, cross" in out and "3 normalisation layers" in out
    assert "ONNX Runtime (adaptive)" in out and "torch eager" in out and "fp16" in out
    assert "composes no sub-models" in out
    assert main(["check-model", str(user_models["folded_onnx"])]) == 1
    assert "allow_unadaptable" in capsys.readouterr().err
    assert main(["check-model", str(user_models["folded_onnx"]), "--allow-unadaptable", "--frames", "5"]) == 0
    assert "nothing adapts" in capsys.readouterr().out
