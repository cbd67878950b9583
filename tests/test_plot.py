"""`geomfast plot` / plot_results writing its file: every byte or a one-line error, never a
truncated file reported as written."""
from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _db(path):
    from geomfast.store import ResultStore

    with ResultStore(path) as s:
        for i, step in enumerate((0, 1, 4, 16, 64, 256)):
            ck = dict(model="org/tiny", revision=f"step{step}", step=step, order=i)
            s.write_result(ck, "last", "last", options={"x": 1},
                           metrics={"rankme": 10 + np.sin(i), "alpha": 1 + i / 10, "n": 100, "dim": 64})
    return path


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_plot_to_a_full_disk_is_a_one_line_error(tmp_path, capsys):
    """/dev/full fails every write with ENOSPC: exit 1, one error line naming the file, and no
    'plot written' (savefig(path) swallowed the error and the command said it had written)."""
    from geomfast.cli import main

    db = _db(tmp_path / "r.db")
    assert main(["plot", str(db), "-o", "/dev/full"]) == 1
    cap = capsys.readouterr()
    assert "plot written" not in cap.out
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geomfast plot: error:")
    assert "No space left on device" in err[0] and "/dev/full" in err[0]

    from geomfast.plot import plot_results

    with pytest.raises(OSError) as e:
        plot_results(db, "/dev/full")
    assert e.value.errno == errno.ENOSPC and e.value.filename == "/dev/full"


def test_failed_write_keeps_the_previous_plot_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """A disk that fills half-way through the PNG: the error is reported, the plot that was
    there is untouched, and no temporary or truncated file is left beside it."""
    from geomfast.cli import main

    db = _db(tmp_path / "r.db")
    out = tmp_path / "plots" / "p.png"
    assert main(["plot", str(db), "-o", str(out)]) == 0
    assert f"plot written to {out}" in capsys.readouterr().out
    before = out.read_bytes()
    assert before[:8] == PNG and len(before) > 20_000

    real_write = os.write
    calls = []

    def full_after_4k(fd, data):  # only files being written under tmp_path/plots fill up
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(out.parent)):
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) > 1:  # the first 4 KiB went to the disk, then it was full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data)[:4096])

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    monkeypatch.setattr(os, "write", full_after_4k)
    assert main(["plot", str(db), "-o", str(out), "--title", "another"]) == 1
    monkeypatch.undo()
    cap = capsys.readouterr()
    assert calls and "plot written" not in cap.out
    assert "No space left on device" in cap.err and str(out) in cap.err
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.png"]


def test_written_file_has_the_format_of_its_extension_and_sane_modes(tmp_path, capsys):
    """The in-memory rendering keeps savefig's choice of format by extension; a new file gets
    the umask's mode (not mkstemp's 0600), an existing one keeps its mode, a symlink stays a
    symlink to the file it names."""
    from geomfast.cli import main
    from geomfast.plot import plot_results

    db = _db(tmp_path / "r.db")
    svg = plot_results(db, tmp_path / "p.svg")
    assert open(svg, "rb").read(200).lstrip().startswith(b"<?xml") and b"<svg" in open(svg, "rb").read()
    assert (tmp_path / "p.pdf").exists() is False
    plot_results(db, tmp_path / "p.pdf")
    assert (tmp_path / "p.pdf").read_bytes()[:5] == b"%PDF-"
    plot_results(db, tmp_path / "noext")  # no extension: PNG, at the path given (savefig(path)
    assert (tmp_path / "noext").read_bytes()[:8] == PNG  # wrote noext.png, then /dev/full.png)
    assert not (tmp_path / "noext.png").exists()
    with pytest.raises(ValueError, match=r"out '.*p\.xyz': cannot write '\.xyz' files; expected one of .*\.png"):
        plot_results(db, tmp_path / "p.xyz")
    assert not (tmp_path / "p.xyz").exists()

    umask = os.umask(0o022)
    try:
        new = tmp_path / "new.png"
        plot_results(db, new)
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        os.chmod(new, 0o640)
        plot_results(db, new)
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
    finally:
        os.umask(umask)

    target = tmp_path / "target.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert main(["plot", str(db), "-o", str(link)]) == 0
    assert link.is_symlink() and target.read_bytes()[:8] == PNG
    capsys.readouterr()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
