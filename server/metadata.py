"""The one type of a call's metadata, whichever transport carried it.

grpc hands a servicer (`ServicerContext.invocation_metadata()`) and an interceptor
(`HandlerCallDetails.invocation_metadata`) a tuple of (key, value) pairs whose values are
`str`, or `bytes` for `-bin` keys; the HTTP shim builds the same from headers
(server/http/context.py), and in-process calls (server/dispatch.py) pass it on.
"""

from __future__ import annotations

Metadata = tuple[tuple[str, str | bytes], ...]
