"""The CLI never shows a traceback unless asked: bad input exits 2 with one message, an
operating-system error exits 1 with one message, a bug exits 1 with one line saying so."""

from __future__ import annotations

import biomip.io
from biomip.cli.main import main


def _boom(exc):
    def f(*a, **k):
        raise exc
    return f


def test_a_bug_is_one_line_not_a_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("BIOMIP_DEBUG", raising=False)
    monkeypatch.setattr(biomip.io, "sniff", _boom(ZeroDivisionError("x")))
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "BIOMIP_DEBUG=1" in err
    assert "Traceback" not in err


def test_an_os_error_is_one_message(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("BIOMIP_DEBUG", raising=False)
    monkeypatch.setattr(biomip.io, "sniff", _boom(OSError(28, "No space left on device")))
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    import pytest

    monkeypatch.setenv("BIOMIP_DEBUG", "1")
    monkeypatch.setattr(biomip.io, "sniff", _boom(ZeroDivisionError("x")))
    with pytest.raises(ZeroDivisionError):
        main(["info", str(tmp_path)])


def test_cli_words_rewrites_a_missing_dependency_message():
    """MissingDependencyError is an ImportError, whose str() is its ``.msg``: the rewrite must reach it."""
    import pytest

    from biomip.cli._common import cli_words
    from biomip.core.errors import MissingDependencyError

    @cli_words(method="--method")
    def cmd():
        raise MissingDependencyError("method: 'farneback' needs OpenCV (or use method='tvl1')")

    with pytest.raises(MissingDependencyError) as info:
        cmd()
    assert str(info.value) == "--method: 'farneback' needs OpenCV (or use --method 'tvl1')"
