"""``Compose`` (ECLM): as Distil, and the sub-model follows the environment: modules are re-scored on recent
uploads and, when another composition fits the budget clearly better, only the modules the edge lacks are sent.
Trainable edges send their adapted modules up; they are integrated into the cloud model module by module (the
teacher every edge shares)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..compose import integrate, keep_shared_affine, modules_update, score_modules, spec_score
from ..messages import KIND_MODULES
from ..models import derive_spec, module_names
from ..norm import affine_state
from .base import Cause, ModulesRefused, Update
from .distil import Distil, EdgeSession


class Compose(Distil):
    """Every ``compose_every`` uploaded frames the edge's sub-model is re-composed for the environment its
    recent uploads show; trainable edges' modules are integrated with weight ``integrate_weight``."""

    SUMMARY = Distil.SUMMARY + "; ECLM re-composition when the environment changes; trainable edges' modules integrated"

    def __init__(self, *args, compose_every: int = 384, integrate_weight: float = 0.5, compose_margin: float = 0.02,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.compose_every, self.integrate_weight = compose_every, integrate_weight
        self.compose_margin = compose_margin  # a swap costs frames: only for a clearly better composition

    def learn(self, batches: Sequence[tuple[str, np.ndarray]]) -> dict[str, Update]:
        updates = super().learn(batches)
        for edge_id in dict.fromkeys(edge for edge, _ in batches):
            session = self.sessions[edge_id]
            if session.since_compose >= self.compose_every and len(session.recent) >= 64:
                session.since_compose = 0
                recomposed = self._recompose(session)
                if recomposed is not None:
                    updates[edge_id] = recomposed
        return updates

    def _recompose(self, session: EdgeSession) -> Update | None:
        teacher = self.teacher_of(session)
        scores = score_modules(teacher, self.preprocess.tensor(np.stack(session.recent)))
        proposed = derive_spec(teacher, self.budget(session.profile), scores)
        gain = spec_score(scores, teacher, proposed) - spec_score(scores, teacher, session.spec)
        if proposed == session.spec or gain < self.compose_margin:
            return None
        sub = self._submodel(proposed)
        student = sub.plain()
        keep_shared_affine(student, session.learner.student_state())
        tensors = modules_update(student, session.spec)
        old = session.spec
        session.learner.retarget(sub.net, sub.net.slot(affine_state(student)))
        session.spec, session.spec_json, session.submodel = proposed, sub.key.rpartition("#")[0], sub
        return Update(KIND_MODULES, tensors, session.spec_json, Cause.RECOMPOSED,
                      f"{list(old.stages)} -> {list(proposed.stages)} for the environment (module score +{gain:.3f})")

    def on_modules(self, edge_id: str, spec_json: str, module_state: dict[str, torch.Tensor],
                   frames: int) -> Update | None:
        """Integrate a trainable edge's adapted modules into the cloud model (every edge's teacher) and into this
        edge's adapted teacher, module by module. Modules adapted on a structure the cloud has since replaced are
        refused."""
        session = self._session(edge_id)
        if spec_json != session.spec_json:
            raise ModulesRefused(f"modules of {edge_id!r} were adapted on a structure it no longer serves")
        try:
            self.integrate_cloud(module_state)
        except ValueError as exc:
            raise ModulesRefused(str(exc)) from exc
        teacher = self.engine.teacher.named(session.learner.teacher.params)
        names = module_names(self.cloud)
        w = self.integrate_weight
        blended = {names[k]: (1 - w) * teacher[names[k]] + w * v.to(teacher[names[k]].dtype)
                   for k, v in module_state.items() if names.get(k) in teacher}
        session.learner.teacher.params.copy_(self.engine.teacher.flat({**teacher, **blended}))
        session.frames += int(frames)
        return None

    def integrate_cloud(self, module_state: dict[str, torch.Tensor]) -> None:
        """Blend an edge's modules into the cloud model, which every edge's teacher and every sub-model cut from
        now on share; ValueError (nothing changed) when they do not fit it."""
        integrate(self.cloud, module_state, self.integrate_weight)
        self.engine.teacher.load_weights(self.cloud)
        self.revision += 1
