"""The configuration reference (docs/configuration.md) rendered from Settings."""

from __future__ import annotations

from server.config import Settings
from server.config_reference import SECTIONS, main, render


def test_every_setting_has_one_row_and_one_topic() -> None:
    page = render()
    for name in Settings.model_fields:
        assert page.count(f"| `{name.upper()}` |") == 1, name
    named = [name for _, _, names in SECTIONS for name in names]
    assert sorted(named) == sorted(set(named))  # no setting in two sections
    assert "## Other settings" not in page  # every setting sits in a topic of its own


def test_rows_say_type_bounds_and_default() -> None:
    page = render()
    assert "| `MODEL_CONTROL_MODE` | one of `none`, `poll`, `explicit`, optional | unset |" in page
    assert "| `STARTUP_MODELS` | list of string | empty |" in page
    assert render() == page  # the same text every time: check-docs compares it with the committed copy


def test_main_writes_the_page(tmp_path, capsys) -> None:
    assert main(["--out", str(tmp_path / "configuration.md")]) == 0
    assert (tmp_path / "configuration.md").read_text() == render()
    assert main([]) == 0
    assert capsys.readouterr().out == render()
