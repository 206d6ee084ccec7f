"""Job records for store-level tests."""

from __future__ import annotations

import uuid

from service.jobs.record import EditParams, JobRecord, StoredFile


def job_record(steps: int = 2, **fields: object) -> JobRecord:
    params = EditParams(
        prompt="x",
        seed=1,
        num_inference_steps=steps,
        guidance_scale=5,
        flow_shift=5,
        width=16,
        height=16,
        outputs=["image"],
    )
    stored = StoredFile(key="k", content_type="image/png", width=16, height=16, bytes=1)
    return JobRecord.model_validate({"id": uuid.uuid4().hex, "params": params, "input": stored, **fields})
