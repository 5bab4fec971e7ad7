"""Dated sections of docs/performance.md: a partial run replaces its own, a full run keeps all."""

from __future__ import annotations

from bench.sections import BEGIN, END, kept_dated_sections, with_dated_section


def section(key: str, body: str) -> str:
    return f"{BEGIN.format(key=key)}\n{body}\n{END.format(key=key)}\n"


def test_a_partial_run_appends_its_section_then_replaces_only_its_own() -> None:
    doc = "# Performance\n\nfull run\n"
    doc = with_dated_section(doc, ["scale"], section("scale", "first"))
    doc = with_dated_section(doc, ["fast"], section("fast", "fast one"))
    doc = with_dated_section(doc, ["scale"], section("scale", "second"))
    assert "first" not in doc
    assert doc.index("full run") < doc.index("second") < doc.index("fast one")
    assert doc.count(BEGIN.format(key="scale")) == 1


def test_parts_name_a_section_in_any_order() -> None:
    doc = with_dated_section("", ["scale", "fast"], section("fast,scale", "one"))
    doc = with_dated_section(doc, ["fast", "scale"], section("fast,scale", "two"))
    assert "one" not in doc and "two" in doc


def test_a_full_run_keeps_every_dated_section_and_nothing_else() -> None:
    doc = "# Performance\n\nold full run\n"
    doc = with_dated_section(doc, ["scale"], section("scale", "a"))
    doc = with_dated_section(doc, ["fast"], section("fast", "b"))
    kept = kept_dated_sections(doc)
    assert "old full run" not in kept
    assert kept.index(BEGIN.format(key="scale")) < kept.index(BEGIN.format(key="fast"))
    assert kept_dated_sections("# Performance\n") == ""
