"""`chronoedit keys create|revoke|list`: the admin side of API keys, and how `chronoedit serve` runs without them.

Imported by the CLI at start, so the heavier modules are imported inside the functions that need them.

`create` prints the key once (only its hash is stored) and the key's `whsec_` webhook secret.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.settings import ApiSettings, CommonSettings

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_keys_parser(sub: Any) -> argparse.ArgumentParser:
    keys = sub.add_parser("keys", help="create, revoke and list API keys (in the configured Redis)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key for a tenant; prints the key once")
    create.add_argument("tenant", help="the tenant the key belongs to; its jobs are visible to its keys only")
    create.add_argument("--name", default="", help="a note, e.g. who uses the key")
    create.add_argument("--rate-limit", type=int, default=None, help="requests per minute (default: the API's)")
    create.add_argument("--max-concurrent", type=int, default=None, help="unfinished jobs at once (default: API's)")
    revoke = actions.add_parser("revoke", help="revoke a key by its id (key_...)")
    revoke.add_argument("key_id")
    actions.add_parser("list", help="list keys (ids, tenants, state; never the keys)")
    return keys


def run_keys(args: argparse.Namespace) -> int:
    import redis

    from service.keys import KeyStore

    settings = CommonSettings()
    store = KeyStore(redis.Redis.from_url(settings.redis_url), settings.key_prefix)
    if args.action == "create":
        token, record = store.create(args.tenant, args.name, args.rate_limit, args.max_concurrent)
        print(f"key id:         {record.id}\ntenant:         {record.tenant}")
        print(f"API key:        {token}\nwebhook secret: {record.webhook_secret}")
        print("The API key is shown only now; store it safely (only its hash is kept).")
        return 0
    if args.action == "revoke":
        if store.revoke(args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"no live key {args.key_id}", file=sys.stderr)
        return 1
    for record in store.all():
        state = "revoked" if record.revoked_at else "live"
        created = datetime.fromtimestamp(record.created_at, tz=UTC).isoformat(timespec="seconds")
        print(f"{record.id}  tenant={record.tenant}  {state}  created={created}  name={record.name!r}")
    return 0


def anonymous_env(settings: ApiSettings, data: Path) -> dict[str, str]:
    """The embedded stack runs without keys on loopback unless CHRONOEDIT_AUTH_REQUIRED is set; webhooks of its
    jobs are signed with a secret kept in the data folder (or CHRONOEDIT_DEFAULT_WEBHOOK_SECRET)."""
    if "auth_required" in settings.model_fields_set or settings.host not in LOOPBACK:
        return {}
    secret = settings.default_webhook_secret.get_secret_value() if settings.default_webhook_secret else None
    if secret is None:
        from service.keys import new_webhook_secret

        path = data / "webhook-secret"
        if not path.exists():
            path.write_text(new_webhook_secret())
            path.chmod(0o600)
        secret = path.read_text().strip()
    return {"CHRONOEDIT_AUTH_REQUIRED": "false", "CHRONOEDIT_DEFAULT_WEBHOOK_SECRET": secret}


def print_anonymous_notice(env: dict[str, str]) -> None:
    if env.get("CHRONOEDIT_AUTH_REQUIRED") != "false":
        return
    print(
        "No API keys needed: requests without `Authorization` are accepted (loopback only) as tenant `default`.\n"
        f"Webhooks of those jobs are signed with {env['CHRONOEDIT_DEFAULT_WEBHOOK_SECRET']}\n"
        "Set CHRONOEDIT_AUTH_REQUIRED=true and create keys with `chronoedit keys create <tenant>` to require keys.\n",
        flush=True,
    )
