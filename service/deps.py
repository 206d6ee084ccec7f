"""FastAPI dependency aliases of the client contract: the contract's services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Principal, authenticate
from service.contract import Contract

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <API key>`; keys come from `chronoedit keys create`.",
)


def get_contract(request: Request) -> Contract:
    return request.app.state.contract


ContractDep = Annotated[Contract, Depends(get_contract)]


def get_principal(
    request: Request,
    contract: ContractDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Principal:
    """Authenticate (401 `unauthorized`) and count the request against the key's rate limit (429 `rate_limited`)."""
    principal = authenticate(contract.api_keys, request.headers.get("authorization"), contract.settings.auth_required)
    contract.limits.check_rate(principal)
    return principal


Caller = Annotated[Principal, Depends(get_principal)]
