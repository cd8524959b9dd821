"""What the launch files share: their common arguments, the DDS profile rule and node construction.

Kept here so that every launch file takes the same arguments with the same meaning and stays a few lines long.
Imports ``launch``/``launch_ros``: only launch files use it.
"""
from __future__ import annotations

import os
from typing import Any

from ament_index_python.packages import get_package_share_directory
from launch.actions import (DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler,
                            SetEnvironmentVariable)
from launch.events import matches_action
from launch.launch_context import LaunchContext
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from ..core.signing import KeyRing
from .links import edge_id_from
from .params import CLOUD_NAMESPACE

PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
#: Nodes that talk to the cloud and take edge_id / cloud_namespace parameters.
EDGE_SIDE = ("edge_learner", "bandwidth_monitor")
#: Managed (lifecycle) nodes, brought up as the ``lifecycle`` argument says; also the nodes that hold keys.
MANAGED = ("edge_learner", "cloud_coordinator")
LIFECYCLE_MODES = ("auto", "launch", "manual")


def config_path(name: str) -> str:
    return os.path.join(get_package_share_directory("eclm_ros"), "config", name)


def common_arguments() -> list:
    """The arguments every launch file takes, then the DDS profile: the ``dds_profile`` argument when given, else
    the user's own $FASTDDS_DEFAULT_PROFILES_FILE, else the shipped profile (never overwriting the user's)."""
    return [
        DeclareLaunchArgument("params_file", default_value="",
                              description="YAML with your parameters (keys /**/<node>), over the shipped defaults"),
        DeclareLaunchArgument("edge_id", default_value="",
                              description="edge id on the edge-cloud link ('' = the robot's namespace)"),
        DeclareLaunchArgument("cloud_namespace", default_value=CLOUD_NAMESPACE.default,
                              description="namespace of the cloud coordinator"),
        DeclareLaunchArgument("keys_dir", default_value="", description="key ring of this machine (eclm-ros keys; "
                              "'' = the nodes' keys_dir: $ECLM_ROS_KEYS, else ~/.config/eclm_ros/keys)"),
        DeclareLaunchArgument("insecure", default_value="", choices=["", "true", "false"],
                              description="lab only: true starts the edge and cloud without keys ('' = as the "
                                          "parameters say: secure)"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("lifecycle", default_value="auto", choices=list(LIFECYCLE_MODES),
                              description="managed nodes: auto (they configure and activate themselves) | launch "
                                          "(this launch drives configure, then activate) | manual (they wait, "
                                          "unconfigured, for your lifecycle manager)"),
        DeclareLaunchArgument("dds_profile", default_value=EnvironmentVariable(
            PROFILE_VARIABLE, default_value=config_path("fastdds_profile.xml")),
            description=f"Fast DDS XML profile (default: ${PROFILE_VARIABLE} if set, else the shipped one)"),
        SetEnvironmentVariable(PROFILE_VARIABLE, LaunchConfiguration("dds_profile")),
    ]


def node(name: str, namespace: Any, params: dict[str, Any] | None = None, **kwargs: Any) -> OpaqueFunction:
    """An eclm_ros node with the common arguments applied: shipped YAML, then ``params_file``, then the launch
    arguments and ``params``. Resolved at launch time so that an empty ``params_file`` is left out; the launch
    arguments win over the files (edge_id '', the default, makes an edge node take its namespace as its id).
    A managed node is a launch_ros ``LifecycleNode`` unless ``lifecycle`` is auto (then it starts itself)."""

    def make(context: LaunchContext) -> list:
        args = context.launch_configurations
        files = [config_path(f"{name}.yaml")] + ([args["params_file"]] if args["params_file"] else [])
        overrides: dict[str, Any] = {"use_sim_time": args["use_sim_time"].strip().lower() in ("true", "1")}
        if name in EDGE_SIDE:
            overrides["cloud_namespace"] = args["cloud_namespace"]
            overrides["edge_id"] = args["edge_id"]
        if name in MANAGED:
            overrides.update({k: v for k, v in (("keys_dir", args["keys_dir"]),
                                                ("insecure", args["insecure"] == "true")) if args[k]})
        managed = name in MANAGED and args["lifecycle"] != "auto"
        if managed:
            overrides["autostart"] = False
        action = (LifecycleNode if managed else Node)(
            package="eclm_ros", executable=name, name=name, namespace=namespace, output="screen",
            parameters=[*files, {**overrides, **(params or {})}],
            arguments=["--ros-args", "--log-level", args["log_level"]], **kwargs)
        if not managed or args["lifecycle"] == "manual":
            return [action]
        return [action, *_bring_up(action)]

    return OpaqueFunction(function=make)


def _bring_up(action: LifecycleNode) -> list:
    """launch_ros's way to drive a managed node: configure once it is up, activate once it is inactive."""
    def change(transition: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(action), transition_id=transition))

    return [RegisterEventHandler(OnStateTransition(target_lifecycle_node=action, start_state="configuring",
                                                   goal_state="inactive",
                                                   entities=[change(Transition.TRANSITION_ACTIVATE)])),
            change(Transition.TRANSITION_CONFIGURE)]


def enrol_keys(namespace: str) -> OpaqueFunction:
    """One machine holding both sides (the demo launch): make the key ring's cloud key and enrol the robot's
    edge id if they are missing, as ``eclm-ros keys init <edge id>`` would, before the nodes start."""

    def make(context: LaunchContext) -> list:
        args = context.launch_configurations
        ring = KeyRing.at(args["keys_dir"])
        ring.init_cloud()
        ring.enrol(edge_id_from(args[namespace], args["edge_id"]))
        return []

    return OpaqueFunction(function=make)
