"""What the workers hold: their queues, devices, weights and adapters."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import Caller, ServicesDep
from service.api.routes.responses import AUTH_ERRORS
from service.api.schemas import ModelList, WorkerModel
from service.jobs.registry import edit_workers

router = APIRouter()


@router.get(
    "/v1/models", response_model=ModelList, responses=AUTH_ERRORS, summary="What the workers hold", tags=["models"]
)
def list_models(caller: Caller, services: ServicesDep) -> ModelList:
    """Each ready worker: its queues, device, dtype, base model digest, LoRA digests and free GPU memory; a worker
    group also its GPUs, parallel layout and ranks."""
    workers = [w for w in edit_workers(services.jobs.registry.workers()) if w.get("ready")]
    return ModelList(data=[WorkerModel.model_validate(w) for w in sorted(workers, key=lambda w: w["name"])])
