"""A job's `timings` through the real stack: null while it is unfinished, then where its time went (queue wait, the
worker's stages, total), consistent with its own timestamps."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

from tests.stack import sample_image, wait_job

pytestmark = pytest.mark.stack

STAGES = ("input_load", "inference", "encode", "upload")


def test_a_finished_edit_says_where_its_time_went(client: httpx.Client) -> None:
    response = client.post(
        "/v1/edits",
        files={"image": ("photo.png", sample_image(64, 64), "image/png")},
        data={"prompt": "make the box blue", "num_inference_steps": "4", "width": "64", "height": "64"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["timings"] is None, "no timings until the job finished"

    done = wait_job(client, response.json()["id"])
    assert done["status"] == "succeeded", done
    timings = done["timings"]
    assert set(timings) == {"enhance", "queue_wait", *STAGES, "total"}, timings
    assert timings["enhance"] is None, "the job asked for no prompt enhancement"
    measured = {name: timings[name] for name in ("queue_wait", *STAGES)}
    assert all(isinstance(seconds, float) and seconds >= 0 for seconds in measured.values()), timings
    assert sum(measured.values()) <= timings["total"] + 1e-5, "the parts cannot take longer than the whole"
    created, finished = (datetime.fromisoformat(done[field]) for field in ("created_at", "finished_at"))
    assert timings["total"] == pytest.approx((finished - created).total_seconds(), abs=1e-3)
    assert max(STAGES, key=lambda stage: timings[stage]) == "inference", timings
