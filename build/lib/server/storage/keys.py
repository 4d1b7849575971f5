"""Object keys: a safe prefix + a unique id + the sanitized base name of the file.

Nothing a client sends can steer a key out of its prefix: directories and `..`
are dropped from file names, control and odd characters are replaced, and
every part is bounded in length. `check_key` guards keys that callers inside
the server build themselves.
"""

from __future__ import annotations

import re
import unicodedata
import uuid

from server.errors import InvalidArgument

MAX_NAME_BYTES = 200
MAX_PREFIX_BYTES = 200
MAX_KEY_BYTES = 1024
DEFAULT_NAME = "file"

_ODD = re.compile(r"[^\w.\-]+")  # \w is Unicode-aware: letters and digits of any script
_RUNS = re.compile(r"[._\-]{2,}")


def safe_name(file_name: str, default: str = DEFAULT_NAME) -> str:
    """The base name of `file_name`, reduced to letters, digits, `.`, `_` and `-`.

    `../../etc/passwd` -> `passwd`; `C:\\x\\a b.png` -> `a_b.png`; control
    characters go; no leading dot (no hidden files, no `..`); at most
    MAX_NAME_BYTES of UTF-8 (the extension is kept); empty -> `default`.
    """
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKC", base)
    base = "".join(c for c in base if c.isprintable())
    base = _RUNS.sub(_one_separator, _ODD.sub("_", base)).strip("._-")
    return _truncate(base, MAX_NAME_BYTES) or default


def safe_prefix(prefix: str) -> str:
    """A `/`-separated prefix whose segments are each `safe_name`d; `.`/`..`/empty dropped."""
    segments = [safe_name(s, default="") for s in prefix.replace("\\", "/").split("/")]
    joined = "/".join(s for s in segments if s)
    return _truncate(joined, MAX_PREFIX_BYTES).strip("/")


def new_key(file_name: str, *prefixes: str) -> str:
    """`<prefix>/.../<32 hex id>-<safe name>`, unique for every call."""
    parts = [p for p in (safe_prefix(x) for x in prefixes) if p]
    return "/".join([*parts, f"{uuid.uuid4().hex}-{safe_name(file_name)}"])


def check_key(key: str) -> str:
    """Reject keys that could escape the store: InvalidArgument naming what is wrong."""
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidArgument(f"object key: must be 1 to {MAX_KEY_BYTES} bytes, got {len(key.encode())}")
    if key.startswith("/") or "\\" in key:
        raise InvalidArgument(f"object key {key!r}: must be relative and use '/' separators")
    if any(not c.isprintable() for c in key):
        raise InvalidArgument(f"object key {key!r}: contains control characters")
    if any(s in ("", ".", "..") or s.startswith(".") for s in key.split("/")):
        raise InvalidArgument(f"object key {key!r}: empty, '.', '..' or hidden path segment")
    return key


def _one_separator(run: re.Match[str]) -> str:
    """A run of `.`, `_` and `-` becomes one: `.` if it has a dot (keeps extensions), else its first."""
    return "." if "." in run.group() else run.group()[0]


def _truncate(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, cut on a character boundary, keeping a short extension."""
    if len(text.encode()) <= limit:
        return text
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 16:
        stem, ext = text, ""
    suffix = f".{ext}" if ext else ""
    room = limit - len(suffix.encode())
    cut = stem.encode()[:room].decode(errors="ignore").rstrip("._-")
    return cut + suffix
