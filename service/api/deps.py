"""FastAPI dependency aliases: the API process's services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.auth import Principal, authenticate
from service.api.services import Services

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <API key>`; keys come from `chronoedit keys create`.",
)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_principal(
    request: Request,
    services: ServicesDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Principal:
    """Authenticate (401 `unauthorized`) and count the request against the key's rate limit (429 `rate_limited`)."""
    principal = authenticate(services.api_keys, request.headers.get("authorization"), services.settings.auth_required)
    services.limits.check_rate(principal)
    return principal


Caller = Annotated[Principal, Depends(get_principal)]
