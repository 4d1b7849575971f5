"""API-key authentication and the per-key rate limit, as a server interceptor.

Keys come from `API_KEYS` (`name:key,name:key`) and/or the file `API_KEYS_FILE`
(one `name:key` or `name:sha256:<hex digest of the key>` per line; `#` starts
a comment). Several keys may share a name (rotation). Callers send
`authorization: Bearer <key>` or the bare key. Keys are kept and compared as
SHA-256 digests with `hmac.compare_digest`, against every configured key, so
the time taken does not depend on which key (if any) matched.

`grpc.health.v1` and the Open Inference Protocol's ServerLive and ServerReady
are always open (probes), server reflection by `AUTH_EXEMPT_REFLECTION`. With no keys configured authentication is off.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server.config import Settings
from server.errors import ResourceExhausted, Unauthenticated
from server.metadata import Metadata
from server.security.ratelimit import RateLimiter
from server.telemetry.calls import Behavior, current_call, is_async, wrap_handler

HEALTH_PREFIX = "/grpc.health.v1."
PROBE_METHODS = ("/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady")
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.", "/grpc.reflection.v1.")
MISSING_KEY = "missing API key: send the metadata 'authorization: Bearer <key>'"
WRONG_KEY = "invalid API key"
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class ApiKey:
    """A named key, kept as the SHA-256 digest of its value."""

    name: str
    digest: bytes


def parse_api_keys(text: str) -> list[ApiKey]:
    """`name:key` pairs separated by commas (the API_KEYS format)."""
    return [_parse_entry(item.strip(), "API_KEYS", hashed=False) for item in text.split(",") if item.strip()]


def read_api_keys_file(path: Path) -> list[ApiKey]:
    """Lines `name:key` or `name:sha256:<hex>`; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SystemExit(f"API_KEYS_FILE: cannot read {path}: {exc.strerror}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(_parse_entry(line, f"API_KEYS_FILE {path} line {number}", hashed=True))
    return keys


def load_api_keys(settings: Settings) -> list[ApiKey]:
    keys = parse_api_keys(settings.api_keys.get_secret_value())
    if settings.api_keys_file is not None:
        keys += read_api_keys_file(settings.api_keys_file)
    return keys


def _parse_entry(entry: str, where: str, hashed: bool) -> ApiKey:
    name, sep, key = entry.partition(":")
    name, key = name.strip(), key.strip()
    if not sep or not name or not key:
        raise SystemExit(f"{where}: expected name:key, got an entry without a name or key")
    kind, _, digest = key.partition(":")
    if hashed and kind == "sha256" and _HEX_DIGEST.match(digest):
        return ApiKey(name, bytes.fromhex(digest))
    return ApiKey(name, hashlib.sha256(key.encode()).digest())


class Authenticator:
    """Who a call's credentials belong to, and whether its method needs any."""

    def __init__(self, keys: list[ApiKey], exempt_reflection: bool = True, limiter: RateLimiter | None = None) -> None:
        self.keys = keys
        self.limiter = limiter
        self._exempt = (HEALTH_PREFIX, *PROBE_METHODS, *(REFLECTION_PREFIXES if exempt_reflection else ()))

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def exempt(self, method: str) -> bool:
        return method.startswith(self._exempt)

    def admits(self, method: str, metadata: Metadata | None) -> bool:
        """Whether a call may be read from: auth is off, the method is exempt, or the key is valid.

        Transports that buffer a request (the HTTP listeners) ask before reading
        the body; the interceptor still decides, logs and rate-limits the call.
        """
        if not self.enabled or self.exempt(method):
            return True
        try:
            self.identify(metadata)
        except Unauthenticated:
            return False
        return True

    def identify(self, metadata: Metadata | None) -> str:
        """The name of the key the metadata carries; Unauthenticated when it is missing or wrong."""
        token = _token(metadata)
        if token is None:
            raise Unauthenticated(MISSING_KEY)
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for key in self.keys:  # every key is compared: the time does not tell which matched
            if hmac.compare_digest(key.digest, digest):
                found = key.name
        if found is None:
            raise Unauthenticated(WRONG_KEY)
        return found


def _token(metadata: Metadata | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            value = value.decode() if isinstance(value, bytes) else value
            scheme, _, rest = value.strip().partition(" ")
            token = rest.strip() if scheme.lower() == "bearer" else value.strip()
            return token or None
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED without a valid key; RESOURCE_EXHAUSTED over the key's rate limit."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if not self.authenticator.enabled or self.authenticator.exempt(handler_call_details.method):
            return handler
        return wrap_handler(handler, self._guarded)

    def _guarded(self, behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
        if is_async(behavior) and response_streaming:

            async def guarded_stream(request: Any, context: grpc.ServicerContext) -> AsyncIterator[Any]:
                await _done(self._admit(context))
                async for response in behavior(request, context):
                    yield response

            return guarded_stream

        if is_async(behavior):

            async def guarded_async(request: Any, context: grpc.ServicerContext) -> Any:
                await _done(self._admit(context))
                return await behavior(request, context)

            return guarded_async

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            self._admit(context)
            return behavior(request, context)

        return guarded

    def _admit(self, context: grpc.ServicerContext) -> Awaitable[None] | None:
        """Return when the call may go on; otherwise abort it: raise, or (grpc.aio's contexts) return
        the abort to await, which raises."""
        try:
            name = self.authenticator.identify(context.invocation_metadata())
            record = current_call()
            if record is not None:
                record.key_name = name
            self._limit(name)
        except RateLimited as exc:
            context.set_trailing_metadata((("retry-after", str(max(1, math.ceil(exc.retry_after)))),))
            return _fail_closed(context.abort(exc.code, exc.message), exc)
        except Unauthenticated as exc:
            return _fail_closed(context.abort(exc.code, exc.message), exc)
        return None

    def _limit(self, name: str) -> None:
        limiter = self.authenticator.limiter
        wait = limiter.acquire(name) if limiter is not None else 0.0
        if limiter is not None and wait > 0:
            raise RateLimited(
                f"rate limit of {limiter.rate:g} requests/s for API key '{name}' exceeded; retry after {wait:.2f}s",
                wait,
            )


def _fail_closed(abort: Any, exc: Exception) -> Awaitable[None]:
    """An abort to await; should a context's abort() return without raising, `exc` is raised."""
    if not inspect.isawaitable(abort):
        raise exc

    async def aborted() -> None:
        await abort
        raise exc

    return aborted()


async def _done(admitted: Awaitable[None] | None) -> None:
    if admitted is not None:
        await admitted


class RateLimited(ResourceExhausted):
    """Over the API key's rate limit; `retry_after` seconds until a call is admitted."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
