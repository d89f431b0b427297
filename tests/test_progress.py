"""skymorph.progress: a live bar on a terminal, one line per redraw (every LOG_INTERVAL_S) in logs."""

from __future__ import annotations

import io
import sys

from skymorph import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_each_redraw_is_a_line_of_its_own(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    for _ in progress.progress_bar(range(3), desc="tiles", unit="tile"):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("tiles:") for line in lines)
    assert "100%" in lines[-1] and " 3/3 " in lines[-1]


def test_in_a_log_a_bar_shorter_than_the_interval_prints_nothing(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress.progress_bar(total=1000, desc="decoding")
    bar.update(1000)
    bar.close()
    assert log.getvalue() == ""


def test_on_a_terminal_the_bar_redraws_in_place(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    for _ in progress.progress_bar(range(3), desc="tiles"):
        pass
    assert "\rtiles: 100%" in terminal.getvalue()


def test_a_disabled_bar_prints_nothing_anywhere(monkeypatch):
    for stream in (io.StringIO(), _Terminal()):
        monkeypatch.setattr(sys, "stderr", stream)
        for _ in progress.progress_bar(range(3), disable=True):
            pass
        assert stream.getvalue() == ""


def test_training_into_a_log_writes_epoch_lines_not_a_line_per_batch(tmp_path, monkeypatch, capsys):
    """Every bar of a run shorter than LOG_INTERVAL_S stays silent in a log, however often the loop
    updates its postfix (a refreshing postfix would print a line per batch)."""
    from skymorph.testing.ring_survey import write_ring_survey
    from skymorph.trainer.loop import TrainConfig, train

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 3600.0)  # "shorter than": however slow the machine
    tiles, labels = write_ring_survey(str(tmp_path))
    train(TrainConfig(tiles=tiles, labels=labels, out=str(tmp_path / "m.ckpt"), schema="gz2", epochs=2, batch_size=8,
                      threads=1, progress=True))
    captured = capsys.readouterr()
    assert captured.err == ""
    assert [line.split(":")[0] for line in captured.out.splitlines()] == ["epoch 1", "epoch 2"]


def test_in_a_log_a_bar_advanced_rarely_but_updated_often_keeps_writing(monkeypatch):
    """A survey run advances one tile in minutes but updates its postfix after every range: the lines
    must keep coming by time, not stop once tqdm has seen how slowly the count moves."""
    import time

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.02)
    bar = progress.progress_bar(total=3, desc="run")
    time.sleep(0.03)
    bar.update(1)
    written = len(log.getvalue().splitlines())
    for step in range(5):
        time.sleep(0.03)
        bar.set_postfix(ranges=step, refresh=False)
        bar.update(0)
    assert len(log.getvalue().splitlines()) - written >= 4
    assert "ranges=4" in log.getvalue().splitlines()[-1]
    bar.close()


def test_in_a_log_stacked_bars_write_no_cursor_codes(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    for _ in progress.progress_bar(range(2), desc="outer"):
        for _ in progress.progress_bar(range(2), desc="inner", leave=False):
            pass
    assert "\x1b" not in log.getvalue() and all(log.getvalue().splitlines())
