"""Disk full and read-only outputs: one clear line, exit 2, and earlier results left intact."""

from __future__ import annotations

import errno
import json
import os

import pytest
from tiny_cli import tiny_train

from gradguide import atomic
from gradguide import train as train_mod
from gradguide.cli import main
from gradguide.errors import GradguideError

TINY = tiny_train("--checkpoint-every", "2", steps=4)


def _full(*_args, **_kw):
    raise OSError(errno.ENOSPC, "No space left on device", "/fake/record.json")


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    atomic.write_json_atomic(target, {"old": True})
    monkeypatch.setattr(atomic.os, "replace", _full)
    with pytest.raises(OSError):
        atomic.write_json_atomic(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary left behind


def test_disk_full_at_the_record_is_one_line_and_keeps_the_checkpoint(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(train_mod, "write_record", _full)
    code = main([*TINY, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "gradguide:" in x]  # the rest is progress bars
    assert line.startswith("gradguide: error: /fake/record.json: cannot write")
    (run_dir,) = list(tmp_path.iterdir())
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4  # the finished training is safe on disk


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_directory(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code = main([*TINY, "--out", str(out)])
    finally:
        out.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(out) in err


def test_read_only_output_directory_error_is_clear(tmp_path, monkeypatch):
    """Root cannot be refused by permissions, so the refusal is simulated at mkdir."""

    def refuse(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(train_mod.Path, "mkdir", refuse)
    with pytest.raises(GradguideError, match="Read-only file system"):
        train_mod.new_run_dir(tmp_path / "runs", "x")


@pytest.mark.parametrize("name", ["../../escape", "/abs/path", "a/../../b", "..", "~/x"])
def test_run_directory_names_cannot_leave_the_output_directory(tmp_path, name):
    """Run names come from model/task names (user files included); they stay under --out."""
    run = train_mod.new_run_dir(tmp_path / "out", f"train-{name}")
    assert run.resolve().parent == (tmp_path / "out").resolve()
