"""Managed nodes: configure loads and checks, activate serves, deactivate stops and keeps state.

rclpy's ``LifecycleNode`` (Humble and newer) runs the standard state machine and its services, so
``ros2 lifecycle set``, nav2's lifecycle manager and launch_ros's ``LifecycleNode`` action drive these nodes.
This base class adds what every eclm_ros node would otherwise repeat: the subscriptions, services, timers,
publishers and clients a transition creates are destroyed by its opposite (an inactive node serves and sends
nothing), a configuration refused with a reason (a missing model, a bad key file) is a FAILURE that leaves the
node unconfigured and alive, and with ``autostart`` (the default) the node brings itself up like a plain node.
"""
from __future__ import annotations

import traceback
from typing import Callable

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

KINDS = ("subscription", "service", "timer", "client", "publisher")


class ManagedNode(LifecycleNode):
    """Subclasses implement ``configure`` (build the core object; raise ValueError or OSError naming the fix),
    ``activate`` (create what serves), and may extend ``deactivate`` (pause the core object, keeping its
    state) and ``cleanup`` (release it)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.failure: str | None = None  # why the last transition was refused
        self._made: dict[str, list[tuple[str, object]]] = {"configure": [], "activate": []}
        self._configured = self._active = False

    def configure(self) -> None:
        raise NotImplementedError

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        """What ``activate`` created is destroyed by the base class; extend to pause a worker."""

    def cleanup(self) -> None:
        """What ``configure`` created is destroyed by the base class; extend to release the core object."""

    def bring_up(self, autostart: bool) -> None:
        """Configure and activate at start-up, as a plain node would run; ValueError with the reason when the
        configuration is refused. Without ``autostart`` the node waits, unconfigured, for a lifecycle manager."""
        if not autostart:
            self.get_logger().info(f"unconfigured, waiting for a lifecycle manager (ros2 lifecycle set "
                                   f"{self.get_fully_qualified_name()} configure)")
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise ValueError(self.failure or "configuration failed (see the log)")
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise ValueError(self.failure or "activation failed (see the log)")

    def close(self) -> None:
        """Process exit: deactivate and clean up, whatever the state."""
        self._teardown()

    def _entities(self) -> list[tuple[str, object]]:
        return [(kind, e) for kind in KINDS for e in getattr(self, f"{kind}s")]

    def _destroy(self, stage: str) -> None:
        for kind, entity in self._made[stage]:
            getattr(self, f"destroy_{kind}")(entity)
        self._made[stage] = []

    def _track(self, stage: str, hook: Callable[[], None]) -> None:
        """Run ``hook`` and remember what it created; when it raises, destroy that again."""
        before = {id(e) for _, e in self._entities()}
        try:
            hook()
        except BaseException:
            self._made[stage] = [(k, e) for k, e in self._entities() if id(e) not in before]
            self._destroy(stage)
            raise
        self._made[stage] = [(k, e) for k, e in self._entities() if id(e) not in before]

    def _transition(self, name: str, step: Callable[[], None]) -> TransitionCallbackReturn:
        """A transition's callback: FAILURE with the reason logged for a refusal, ERROR (rclpy then calls
        ``on_error``) for anything unexpected, which rclpy itself would swallow without a word."""
        try:
            step()
        except (ValueError, OSError) as exc:
            self.failure = str(exc)
            self.get_logger().error(f"{name} refused: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception:  # noqa: BLE001 - logged; on_error takes the node back to unconfigured
            self.failure = traceback.format_exc()
            self.get_logger().error(f"{name} failed:\n{self.failure}")
            return TransitionCallbackReturn.ERROR
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        self._track("configure", self.configure)
        self._configured, self.failure = True, None

    def _activate(self) -> None:
        self._track("activate", self.activate)
        self._active = True

    def _deactivate(self) -> None:
        self._active = False
        self._destroy("activate")
        self.deactivate()

    def _cleanup(self) -> None:
        self._configured = False
        self._destroy("configure")
        self.cleanup()

    def _teardown(self) -> None:
        if self._active:
            self._deactivate()
        if self._configured:
            self._cleanup()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("shutdown", self._teardown)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Back to unconfigured, with everything released, so the node can be configured again."""
        return self._transition("error recovery", self._teardown)
