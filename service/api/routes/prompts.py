"""The prompts resource: the prompt enhancer on its own, for review before an edit."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import Caller, ServicesDep
from service.api.prompts import enhance_prompt
from service.api.routes.responses import ERR, ERRORS
from service.api.schemas import PromptEnhancement

router = APIRouter()

PROMPT_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PromptEnhanceCreate"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image", "prompt"],
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "The image file."},
                    "prompt": {"type": "string", "minLength": 1, "maxLength": 4000},
                    "kind": {"type": "string", "enum": ["edit", "sketch"]},
                },
            }
        },
    },
}


@router.post(
    "/v1/prompts/enhance",
    response_model=PromptEnhancement,
    responses={**ERRORS, 503: ERR},
    openapi_extra={"requestBody": PROMPT_REQUEST_BODY},
    summary="Enhance a prompt",
    description="The prompt enhancer (a vision-language model looking at the image) rewrites the instruction into "
    "the long prompt ChronoEdit follows; nothing is edited. Waits for the answer (up to the server's enhancement "
    "timeout); 503 `enhancer_unavailable` when no enhancer runs, fails or answers in time.",
    tags=["prompts"],
)
async def create_prompt_enhancement(request: Request, caller: Caller, services: ServicesDep) -> PromptEnhancement:
    return await enhance_prompt(request, services, caller)
