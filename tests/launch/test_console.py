"""The command line's console logging: the library logs with ``logging``, the CLI shows the lines as
they were printed before (no prefix; the training notes on stdout, everything else on stderr)."""

from __future__ import annotations

import logging

import pytest

from mtl_torchrec.launch.cli import ConsoleHandler, show_logs_on_console


def test_console_lines_are_the_messages_on_the_stream_they_were_printed_to(capsys: pytest.CaptureFixture) -> None:
    show_logs_on_console()
    show_logs_on_console()  # idempotent: one handler, each line once
    package = logging.getLogger("mtl_torchrec")
    assert sum(isinstance(h, ConsoleHandler) for h in package.handlers) == 1
    capsys.readouterr()
    logging.getLogger("mtl_torchrec.train.resume").info("note: %s selected by '%s'", "meta.json", "click.auc")
    logging.getLogger("mtl_torchrec.model.text").info("text feature 'title': 9 rows")
    logging.getLogger("mtl_torchrec.eval.evaluate").info("loading data (spec.yaml) ...")
    logging.getLogger("mtl_torchrec.serve.predict").warning("warning: %s", "2 bad rows skipped")
    logging.getLogger("mtl_torchrec.model.builder").warning("a warning of a training module")
    logging.getLogger("mtl_torchrec.eval.evaluate").debug("not shown")
    out, err = capsys.readouterr()
    assert out == "note: meta.json selected by 'click.auc'\ntext feature 'title': 9 rows\n"
    assert err == "loading data (spec.yaml) ...\nwarning: 2 bad rows skipped\na warning of a training module\n"


def test_records_still_reach_standard_logging(caplog: pytest.LogCaptureFixture) -> None:
    """Library users get ordinary records (level, logger name), with or without the console handler."""
    with caplog.at_level(logging.INFO, logger="mtl_torchrec"):
        logging.getLogger("mtl_torchrec.train.resume").info("note: x")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("mtl_torchrec.train.resume", logging.INFO, "note: x")]
