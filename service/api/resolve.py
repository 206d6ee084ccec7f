"""Resolving a validated edit request into a job record: the preset, the output size, the seed, every default."""

from __future__ import annotations

import hashlib
import io
import secrets
import uuid

from PIL import Image

from chronoedit_core.images import DecodedImage, ImageLimits, decode_image
from chronoedit_core.presets import DISTILL, TURBO, Preset, preset
from chronoedit_core.sizing import check_output_size, default_output_size
from service.api.errors import ApiError
from service.api.inputs import decode_base64
from service.api.schemas import EditCreate
from service.jobs.record import EditParams, Enhancement, EnhancePolicy, JobRecord, Progress, StoredFile, input_key
from service.settings import ApiSettings

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def build_job(edit: EditCreate, data: bytes, settings: ApiSettings) -> tuple[JobRecord, bytes]:
    """Validate the image, the preset and the output size, resolve every default; return the new job's record and
    the input bytes to store (the upload itself, or the image with the sketch overlay drawn in)."""
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    decoded = decode_image(data, limits)
    chosen = _preset(edit)
    if edit.sketch_base64 is not None:
        data, decoded = _composite_sketch(edit, decoded, limits)
    width, height = decoded.image.size
    output = (
        _upscale_size(edit, width, height, settings)
        if edit.kind == "upscale"
        else _output_size(edit, width, height, settings)
    )
    steps = edit.num_inference_steps or chosen.num_inference_steps
    _check_reasoning(edit, chosen, steps)
    policy = enhance_policy(edit, settings)
    job_id = uuid.uuid4().hex
    params = EditParams(
        mode=chosen.mode,
        prompt=edit.prompt,
        model_prompt=chosen.prompt(edit.prompt),
        negative_prompt=edit.negative_prompt,
        loras=list(chosen.loras),
        seed=edit.seed if edit.seed is not None else secrets.randbelow(2**32),
        num_inference_steps=steps,
        guidance_scale=edit.guidance_scale if edit.guidance_scale is not None else chosen.guidance_scale,
        flow_shift=edit.flow_shift if edit.flow_shift is not None else chosen.flow_shift,
        width=output[0],
        height=output[1],
        outputs=edit.outputs,
        fps=edit.fps,
        fp8=edit.fp8,
        step_cache=edit.step_cache,
        guidance_steps=_guidance_steps(edit, chosen, steps),
        temporal_reasoning=edit.temporal_reasoning,
        reasoning_steps=(edit.reasoning_steps or steps) if edit.temporal_reasoning else None,
        output_size=edit.output_size,
    )
    stored = StoredFile(
        key=input_key(job_id, EXTENSIONS[decoded.format]),
        content_type=decoded.content_type,
        width=width,
        height=height,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    # A job to enhance waits for its enhancer first (`enhancing`); `model_prompt` is replaced once it answered.
    progress = Progress(step=0, total=params.num_inference_steps, stage="enhancing" if policy else "queued")
    cache = edit.cache and edit.seed is not None  # a drawn seed never repeats: nothing to reuse
    enhancement = Enhancement(policy=policy) if policy else None
    job = JobRecord(
        id=job_id, kind=edit.kind, params=params, input=stored, progress=progress, cache=cache, enhancement=enhancement
    )
    return job, data


def enhance_policy(edit: EditCreate, settings: ApiSettings) -> EnhancePolicy | None:
    """The job's prompt-enhancement policy, None for none: as asked, else the server's default for the kind."""
    choice = edit.enhance_prompt
    if choice is None:
        default = settings.enhance_prompt_defaults.get(edit.kind, "off") if edit.kind != "upscale" else "off"
        return None if default == "off" else default
    if choice is False:
        return None
    if edit.kind == "upscale":
        raise ApiError(
            422, "invalid_parameter", "`enhance_prompt` is not for `upscale` jobs: their trigger prompt is fixed"
        )
    return settings.enhance_policy if choice is True else choice


def _preset(edit: EditCreate) -> Preset:
    if edit.scale is not None and edit.kind != "upscale":
        raise ApiError(422, "invalid_parameter", "`scale` is for `upscale` jobs; other kinds take `width`/`height`")
    if edit.sketch_base64 is not None and edit.kind != "sketch":
        raise ApiError(422, "invalid_parameter", "a `sketch` overlay is for `sketch` jobs")
    if edit.mode == TURBO and edit.kind != "edit":
        raise ApiError(422, "invalid_parameter", f"mode `turbo` is for `edit` jobs, not `{edit.kind}`")
    return preset(edit.kind, edit.mode)


def _guidance_steps(edit: EditCreate, chosen: Preset, steps: int) -> int | None:
    """Limited guidance needs guidance to limit, and at most every step."""
    if edit.guidance_steps is None:
        return None
    scale = edit.guidance_scale if edit.guidance_scale is not None else chosen.guidance_scale
    if scale <= 1:
        raise ApiError(422, "invalid_parameter", "`guidance_steps` needs `guidance_scale` above 1")
    if edit.guidance_steps > steps:
        raise ApiError(422, "invalid_parameter", f"`guidance_steps` ({edit.guidance_steps}) is above the {steps} steps")
    return edit.guidance_steps


def _check_reasoning(edit: EditCreate, chosen: Preset, steps: int) -> None:
    if not edit.temporal_reasoning:
        if edit.reasoning_steps is not None:
            raise ApiError(422, "invalid_parameter", "`reasoning_steps` needs `temporal_reasoning: true`")
        return
    if chosen.mode == TURBO:
        raise ApiError(422, "invalid_parameter", "temporal reasoning runs on the base transformer; use mode `standard`")
    if DISTILL in chosen.loras:
        raise ApiError(
            422,
            "reasoning_with_distill",
            f"temporal reasoning does not work with the distill LoRA of `{chosen.mode}` mode (it renders black "
            "frames); use mode `standard`",
        )
    if edit.reasoning_steps is not None and edit.reasoning_steps > steps:
        raise ApiError(
            422, "invalid_parameter", f"`reasoning_steps` ({edit.reasoning_steps}) is above the {steps} steps"
        )


def _composite_sketch(edit: EditCreate, decoded: DecodedImage, limits: ImageLimits) -> tuple[bytes, DecodedImage]:
    """Draw the RGBA overlay's strokes over the image; the composite becomes the job's input (PNG)."""
    raw = decode_base64(edit.sketch_base64 or "", limits.max_bytes, "sketch_base64")
    overlay = decode_image(raw, limits, keep_alpha=True).image.convert("RGBA")
    if overlay.size != decoded.image.size:
        overlay = overlay.resize(decoded.image.size, Image.Resampling.LANCZOS)
    composite = Image.alpha_composite(decoded.image.convert("RGBA"), overlay).convert("RGB")
    buffer = io.BytesIO()
    composite.save(buffer, format="PNG")
    return buffer.getvalue(), DecodedImage(image=composite, format="PNG")


def _output_size(edit: EditCreate, width: int, height: int, settings: ApiSettings) -> tuple[int, int]:
    if (edit.width is None) != (edit.height is None):
        raise ApiError(422, "invalid_size", "give both `width` and `height`, or neither to use the size rule")
    if edit.width is not None and edit.height is not None:
        size = (edit.width, edit.height)
    else:
        rule = default_output_size(width, height, max_side=settings.max_output_side)
        size = (rule.width, rule.height)
    try:
        check_output_size(*size, max_side=settings.max_output_side, max_area=settings.max_output_pixels)
    except ValueError as exc:
        raise ApiError(422, "invalid_size", str(exc)) from exc
    return size


def _upscale_size(edit: EditCreate, width: int, height: int, settings: ApiSettings) -> tuple[int, int]:
    """Explicit `width`/`height`, or the input times `scale` (default 2), aspect kept, long side capped."""
    limit = settings.max_upscale_side
    if edit.width is not None or edit.height is not None:
        if edit.scale is not None:
            raise ApiError(422, "invalid_size", "give `scale` or `width`/`height`, not both")
        return _checked(_output_size(edit, width, height, settings), settings)
    scale = edit.scale or 2.0
    factor = min(scale, limit / max(width, height))
    if factor <= 1:
        message = f"the input's long side ({max(width, height)} px) is already at the upscale limit of {limit} px"
        raise ApiError(422, "invalid_size", message)
    size = (max(16, int(width * factor) // 16 * 16), max(16, int(height * factor) // 16 * 16))
    return _checked(size, settings)


def _checked(size: tuple[int, int], settings: ApiSettings) -> tuple[int, int]:
    try:
        check_output_size(*size, max_side=settings.max_upscale_side, max_area=settings.max_output_pixels)
    except ValueError as exc:
        raise ApiError(422, "invalid_size", str(exc)) from exc
    return size
