"""The remote backend: any OpenAI-compatible chat-completions endpoint that accepts images (a vLLM server hosting
Qwen3-VL, for example), through the `openai` client, which times requests out and retries them with backoff."""

from __future__ import annotations

from typing import Any, cast

import openai

from service.enhance.prompts import EnhanceRequest, EnhancerError, chat_messages, clean_answer, data_url
from service.enhance.settings import EnhancerSettings


class RemoteEnhancer:
    def __init__(self, settings: EnhancerSettings) -> None:
        key = settings.enhancer_api_key.get_secret_value() if settings.enhancer_api_key else "unused"
        self.client = openai.OpenAI(
            base_url=settings.enhancer_url,
            api_key=key,  # the client insists on one; servers without keys ignore it
            timeout=settings.enhancer_request_timeout_seconds,
            max_retries=settings.enhancer_max_retries,
        )
        self.model = settings.enhancer_model
        self.max_tokens = settings.enhancer_max_new_tokens
        self.temperature = settings.enhancer_temperature

    @property
    def name(self) -> str:
        return f"remote:{self.model}"

    def enhance(self, request: EnhanceRequest) -> str:
        image = {"type": "image_url", "image_url": {"url": data_url(request.image)}}
        try:
            completion = self.client.chat.completions.create(
                model=self.model,
                messages=cast(Any, chat_messages(request, image)),
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
        except openai.OpenAIError as exc:  # timeouts and connection errors included, after the retries
            raise EnhancerError(f"{self.client.base_url}: {exc.__class__.__name__}: {exc}") from exc
        if not completion.choices:
            raise EnhancerError(f"{self.client.base_url} answered without a choice")
        return clean_answer(completion.choices[0].message.content or "")
