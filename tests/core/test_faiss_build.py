"""The faiss build a summary records is the one this process imported."""

from __future__ import annotations

import sys

import faiss

from core.faiss_build import faiss_build


def test_faiss_build_names_the_installed_build() -> None:
    info = faiss_build()
    assert info["faiss_version"] == faiss.__version__
    assert info["faiss_build"] == ("gpu" if hasattr(faiss, "StandardGpuResources") else "cpu")
    assert info["faiss_gpus"] == (faiss.get_num_gpus() if info["faiss_build"] == "gpu" else 0)


def test_without_faiss_a_command_ends_with_the_install_line(monkeypatch) -> None:
    """faiss comes from an extra ([cpu] or [gpu]); a plain install must say which to add."""
    import click
    import pytest

    from core.cli import user_errors
    from core.errors import MissingExtra
    from core.faiss_build import import_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)  # what a missing module looks like
    with pytest.raises(MissingExtra, match=r"dcgan-pipeline\[cpu\]"):
        import_faiss()

    @user_errors
    def command() -> None:
        import_faiss()

    with pytest.raises(click.ClickException, match="faiss is not installed"):
        command()
