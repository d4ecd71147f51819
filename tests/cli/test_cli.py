import subprocess
import sys

import pytest

from ntkscale import __version__
from ntkscale.cli.main import main


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "ntkscale.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: ntkscale" in out.stdout


def test_a_full_disk_in_the_driver_is_one_line_and_exit_2(monkeypatch, capsys):
    """A persistent OS error in the driver's own writes (found by the soak: ENOSPC while
    zarr writes metadata) is one clear line with the fix and exit 2, not a traceback;
    other OS errors still raise."""
    import errno
    import importlib

    cli_main = importlib.import_module("ntkscale.cli.main")      # the module (ntkscale.cli.main is the function)

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/store/gram/train/ntk/zarr.json")

    monkeypatch.setitem(cli_main.COMMANDS, "gram", cli_main.COMMANDS["gram"]._replace(run=full))
    assert main(["gram", "x.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "disk holding the store is full" in err and "zarr.json" in err
    assert "free space" in err

    def missing(args):
        raise OSError(errno.ENOENT, "No such file", "/nowhere")

    monkeypatch.setitem(cli_main.COMMANDS, "gram", cli_main.COMMANDS["gram"]._replace(run=missing))
    with pytest.raises(OSError):
        main(["gram", "x.yaml"])
