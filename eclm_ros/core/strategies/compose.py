"""``Compose`` (ECLM): as Distil, and the sub-model follows the environment: modules are re-scored on recent
uploads and, when another composition fits the budget clearly better, only the modules the edge lacks are sent.
Trainable edges send their adapted modules up; they are integrated into the cloud model module by module."""
from __future__ import annotations

import numpy as np
import torch

from ..compose import calibrated_submodel, integrate, keep_shared_affine, modules_update, score_modules, spec_score
from ..messages import KIND_MODULES
from ..models import derive_spec
from ..norm import affine_state
from .base import Cause, ModulesRefused, Update
from .distil import Distil, EdgeSession, spec_json


class Compose(Distil):
    """Every ``compose_every`` uploaded frames the edge's sub-model is re-composed for the environment its
    recent uploads show; trainable edges' modules are integrated with weight ``integrate_weight``."""

    SUMMARY = Distil.SUMMARY + "; ECLM re-composition when the environment changes; trainable edges' modules integrated"

    def __init__(self, *args, compose_every: int = 384, integrate_weight: float = 0.5, compose_margin: float = 0.02,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compose_every, self.integrate_weight = compose_every, integrate_weight
        self.compose_margin = compose_margin  # a swap costs frames: only for a clearly better composition

    def on_samples(self, edge_id: str, views: np.ndarray) -> Update | None:
        update = super().on_samples(edge_id, views)
        session = self.sessions[edge_id]
        if session.since_compose >= self.compose_every and len(session.recent) >= 64:
            session.since_compose = 0
            return self._recompose(session) or update
        return update

    def _recompose(self, session: EdgeSession) -> Update | None:
        teacher = session.distiller.teacher
        scores = score_modules(teacher, self.preprocess.tensor(np.stack(session.recent)))
        proposed = derive_spec(teacher, self.budget(session.profile), scores)
        gain = spec_score(scores, teacher, proposed) - spec_score(scores, teacher, session.spec)
        if proposed == session.spec or gain < self.compose_margin:
            return None
        student = calibrated_submodel(self.cloud, proposed, self.calibration)
        keep_shared_affine(student, affine_state(session.distiller.student))
        tensors = modules_update(student, session.spec)
        old = session.spec
        session.distiller.retarget(student)
        session.spec, session.spec_json = proposed, spec_json(self.cloud, proposed)
        session.served = {k: v.clone() for k, v in student.state_dict().items()}
        return Update(KIND_MODULES, tensors, session.spec_json, Cause.RECOMPOSED,
                      f"{list(old.stages)} -> {list(proposed.stages)} for the environment (module score +{gain:.3f})")

    def on_modules(self, edge_id: str, spec_json: str, module_state: dict[str, torch.Tensor],
                   frames: int) -> Update | None:
        """Integrate a trainable edge's adapted modules into the cloud model (and its teacher), module by module.
        Modules adapted on a structure the cloud has since replaced are refused."""
        session = self._session(edge_id)
        if spec_json != session.spec_json:
            raise ModulesRefused(f"modules of {edge_id!r} were adapted on a structure it no longer serves")
        try:
            integrate(self.cloud, module_state, self.integrate_weight)
            integrate(session.distiller.teacher, module_state, self.integrate_weight)
        except ValueError as exc:
            raise ModulesRefused(str(exc)) from exc
        session.frames += int(frames)
        return None
