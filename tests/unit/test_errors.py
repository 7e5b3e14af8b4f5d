"""Errors keep what they say once raised: another wording is a new error of the same kind."""

from __future__ import annotations

import inspect

import pytest

from nixery import errors


def every_error() -> list[errors.NixeryError]:
    """One instance of each error class, built with placeholder arguments of its signature."""
    made = []
    for cls in vars(errors).values():
        if inspect.isclass(cls) and issubclass(cls, errors.NixeryError):
            params = list(inspect.signature(cls).parameters.values())
            args = [
                1 if p.annotation in ("int", "float") else ["x"] if "Sequence" in str(p.annotation)
                else "x"
                for p in params
                if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
            ]  # fmt: skip
            keywords = {
                p.name: "x"
                for p in params
                if p.default is inspect.Parameter.empty and p.kind is p.KEYWORD_ONLY
            }
            made.append(cls(*args, **keywords))
    return made


@pytest.mark.parametrize("error", every_error(), ids=lambda e: type(e).__name__)
def test_an_error_told_another_way_is_a_copy_of_its_kind(error: errors.NixeryError) -> None:
    before = (error.message, error.args, dict(vars(error)))
    other = error.with_message("the aarch64-linux image: " + error.message)
    assert type(other) is type(error)
    assert other.message == other.args[0] == "the aarch64-linux image: " + error.message
    assert other.detail == error.detail
    assert (error.message, error.args, dict(vars(error))) == before
