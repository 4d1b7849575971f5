"""Path templates of `google.api.http` rules, compiled to regular expressions.

The grammar (from google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

A template is matched against the raw (still percent-encoded) request path, so
an encoded `/` or `:` inside a variable never splits a segment; captured values
are decoded afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_ONE_SEGMENT = "[^/]+"
_ANY_SEGMENTS = ".*"


class TemplateError(ValueError):
    """A `google.api.http` path template that does not follow the grammar."""


@dataclass(frozen=True)
class PathTemplate:
    """A compiled path template: its regex, variables (field paths) and verb."""

    template: str
    regex: re.Pattern[str]
    variables: tuple[str, ...]
    verb: str
    literals: int
    openapi_path: str

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Field path -> decoded value for a matching raw path, else None."""
        found = self.regex.match(raw_path)
        if found is None:
            return None
        return {field: unquote(found.group(f"v{i}")) for i, field in enumerate(self.variables)}

    @property
    def specificity(self) -> tuple[int, int]:
        """Templates with a verb, then with more literal segments, are tried first."""
        return (1 if self.verb else 0, self.literals)


def _split_top(text: str, separator: str) -> list[str]:
    """Split on `separator` outside braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"unbalanced '}}' at {i}")
        elif char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise TemplateError("unbalanced '{'")
    parts.append(text[start:])
    return parts


def _split_verb(template: str) -> tuple[str, str]:
    """(path, verb): the verb is the text after a ':' in the last segment, outside braces."""
    last_slash = template.rfind("/")
    depth = 0
    for i in range(len(template) - 1, last_slash, -1):
        char = template[i]
        if char == "}":
            depth += 1
        elif char == "{":
            depth -= 1
        elif char == ":" and depth == 0:
            return template[:i], template[i + 1 :]
    return template, ""


class _Compiler:
    """Turns segments into regex text, collecting variables in order."""

    def __init__(self) -> None:
        self.variables: list[str] = []
        self.literals = 0

    def segments(self, text: str, inside_variable: bool = False) -> str:
        return "/".join(self.segment(s, inside_variable) for s in text.split("/"))

    def segment(self, segment: str, inside_variable: bool) -> str:
        if segment == "*":
            return _ONE_SEGMENT
        if segment == "**":
            return _ANY_SEGMENTS
        if segment.startswith("{") and segment.endswith("}"):
            if inside_variable:
                raise TemplateError(f"nested variable {segment}")
            return self.variable(segment[1:-1])
        if not segment or any(c in segment for c in "{}*"):
            raise TemplateError(f"bad segment {segment!r}")
        self.literals += 1
        return re.escape(segment)

    def variable(self, body: str) -> str:
        field, _, pattern = body.partition("=")
        if not _IDENT.match(field):
            raise TemplateError(f"bad field path {field!r}")
        index = len(self.variables)
        self.variables.append(field)
        inner = self.segments(pattern, inside_variable=True) if pattern else _ONE_SEGMENT
        return f"(?P<v{index}>{inner})"


def compile_template(template: str) -> PathTemplate:
    """Compile a path template such as `/v1/models/{model}:predict`."""
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a path template starts with '/'")
    path, verb = _split_verb(template)
    if verb and not re.fullmatch(r"[A-Za-z0-9_.~-]+", verb):
        raise TemplateError(f"{template!r}: bad verb {verb!r}")
    compiler = _Compiler()
    body = "/".join(compiler.segment(s, False) for s in _split_top(path[1:], "/"))
    suffix = ":" + re.escape(verb) if verb else ""
    openapi = re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", template)
    return PathTemplate(
        template=template,
        regex=re.compile(f"/{body}{suffix}\\Z"),
        variables=tuple(compiler.variables),
        verb=verb,
        literals=compiler.literals,
        openapi_path=openapi,
    )
