"""edge_learner: infer on any camera topic, upload the frames worth learning from, take cloud updates.

Subscribes `image` (remap it to your camera) and `bandwidth`; publishes `predictions`, and the standard
`classification` (vision_msgs/Classification, every class score) and `label_info` (latched); talks to the cloud
through `<cloud_namespace>/samples`, `edge_status`, `learned_modules`, `updates/<edge_id>` and the
`register_edge` service. Everything between those is the ROS-free ``EdgeAgent``. A managed node: configure
loads and checks the model and keys, activate serves, deactivate stops serving and uploading and keeps the
agent (its model version, queued uploads and adapted state) for the next activation.
"""
from sensor_msgs.msg import CompressedImage, Image

from ...core import checkpoint
from ...core.edge_agent import EdgeAgent, EdgeConfig
from ...core.edge_runtime import make_runtime
from ...core.messages import Profile
from ...core.model_import import InputSpec, describe_input, load_model
from ...core.signing import KeyRing, edge_keys
from ...msg import BandwidthEstimate, ModelUpdate, Prediction
from ..lifecycle import ManagedNode
from ..links import DdsEdgeLink, edge_id_for, updates_topic
from ..params import EDGE_LEARNER, NodeParameters
from ..ros_io import (RELIABLE_QOS, SENSOR_QOS, UPDATE_QOS, Diagnostics, ImageError, core_logger, frame_from_msg,
                      run_node, update_from_msg)
from ..vision import VisionOutputs

RUNTIME_SETTINGS = ("upload_ratio", "upload_batch", "max_queued_batches", "max_update_bytes", "register_period_s",
                    "module_upload_frames", "chunk_timeout_s")
PROFILE_SETTINGS = ("max_params", "max_macs", "max_latency_ms", "device")


class EdgeLearner(ManagedNode):
    def __init__(self) -> None:
        super().__init__("edge_learner")
        self.params = NodeParameters(self, EDGE_LEARNER, self.on_parameter)
        self.agent: EdgeAgent | None = None

    def configure(self) -> None:
        p = self.params
        path = p["model_path"] or checkpoint.default_path("edge")
        if p["input_shape"] and len(p["input_shape"]) != 3:
            raise ValueError(f"input_shape {p['input_shape']} refused: give [channels, height, width]")
        spec = InputSpec(p["labels_path"], tuple(p["input_mean"]), tuple(p["input_std"]),
                         tuple(p["input_shape"][1:]), int(p["input_shape"][0]) if p["input_shape"] else 0,
                         p["allow_unadaptable"])
        model = load_model(path, spec, fix="run 'eclm-ros train' (or set model_path to a trained checkpoint)")
        config = EdgeConfig(edge_id=edge_id_for(self, p["edge_id"]), profile=self._profile(p.values),
                            local_batch=p["local_batch"], **{k: p[k] for k in RUNTIME_SETTINGS})
        cloud_key, private_key = edge_keys(KeyRing.at(p["keys_dir"]), config.edge_id, p["cloud_public_key"],
                                           p["private_key"], p["insecure"])
        gaps = [gap for gap, key in (("unsigned updates are applied", cloud_key), ("uploads are unsigned",
                                                                                  private_key)) if key is None]
        if gaps:
            self.get_logger().warning(f"insecure (lab mode): {', '.join(gaps)}")
        runtime = make_runtime(p["runtime"], model.model, p["bn_momentum"], p["runtime_threads"],
                               model.description.input_shape(), p["shift_threshold"])
        self.agent = EdgeAgent(runtime, model.description, DdsEdgeLink(self, p["cloud_namespace"]), config,
                               cloud_key=cloud_key, private_key=private_key, log=core_logger(self, "edge"))
        self.prediction = Prediction()  # reused: publish() serialises it at once
        self.pred_pub = self.create_publisher(Prediction, "predictions", RELIABLE_QOS)
        self.vision = VisionOutputs(self, model.description.labels)
        self.diagnostics = Diagnostics(self, self.settings)
        self.get_logger().info(f"edge {config.edge_id}: {path} ({model.description.num_classes} classes, input "
                               f"{describe_input(model.description)})")

    def activate(self) -> None:
        p, agent = self.params, self.agent
        if p["image_transport"] == "compressed":  # image_transport's convention: <base topic>/compressed
            self.create_subscription(CompressedImage, "image/compressed", self.on_image, SENSOR_QOS)
        else:
            self.create_subscription(Image, "image", self.on_image, SENSOR_QOS)
        self.create_subscription(ModelUpdate, updates_topic(p["cloud_namespace"], agent.config.edge_id),
                                 self.on_update, UPDATE_QOS)
        self.create_subscription(BandwidthEstimate, "bandwidth", self.on_bandwidth, RELIABLE_QOS)
        self.create_timer(0.5, agent.tick)
        self.create_timer(0.05, agent.finish_swap)  # a new model serves as soon as it is built
        self.create_timer(1.0, lambda: self.diagnostics.publish(agent.health()))
        self.get_logger().info(f"edge {agent.config.edge_id} serving model version {agent.version}")

    def cleanup(self) -> None:
        self.agent.close()
        self.agent = None

    @staticmethod
    def _profile(values: dict) -> Profile:
        return Profile(trainable=values["adapt_locally"], max_params=values["max_params"],
                       max_macs=values["max_macs"], max_latency_ms=values["max_latency_ms"], device=values["device"])

    def on_parameter(self, name: str, value) -> None:
        """A run-time change goes straight into the agent (which validates it); unconfigured, the value waits
        for the next configuration."""
        if self.agent is None:
            return
        if name in RUNTIME_SETTINGS:
            self.agent.configure(**{name: value})
        elif name in PROFILE_SETTINGS:  # the next heartbeat carries it: the cloud re-derives the sub-model
            self.agent.configure(profile=self._profile({**self.params.values, name: value}))

    def settings(self) -> dict:
        config = self.agent.config
        return {**{k: getattr(config, k) for k in RUNTIME_SETTINGS},
                **{k: getattr(config.profile, k) for k in PROFILE_SETTINGS}}

    def on_image(self, msg: Image | CompressedImage) -> None:
        try:
            frame, channel_order = frame_from_msg(msg)
        except ImageError as exc:
            self.agent.reject_frame(str(exc))
            return
        pred = self.agent.on_frame(frame, (msg.header.stamp.sec, msg.header.stamp.nanosec), channel_order)
        if pred is None:
            return
        out = self.prediction
        out.header, out.class_id, out.label, out.score = msg.header, pred.class_id, pred.label, pred.score
        out.entropy, out.model_version, out.selected = pred.entropy, pred.model_version, pred.selected
        self.pred_pub.publish(out)
        self.vision.publish(msg.header, pred.probs)

    def on_update(self, msg: ModelUpdate) -> None:
        self.agent.on_update(update_from_msg(msg))

    def on_bandwidth(self, msg: BandwidthEstimate) -> None:
        self.agent.on_link(msg.upload_budget_bps, msg.link_up)


def main() -> None:
    run_node(EdgeLearner)


if __name__ == "__main__":
    main()
