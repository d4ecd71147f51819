import subprocess
import sys

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
