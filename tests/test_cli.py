"""The command line starts without importing torch; the package exports load on first use."""

from __future__ import annotations

import subprocess
import sys

import crossattn
from crossattn.cli import COMMANDS, main


def test_help_and_import_do_not_import_torch():
    code = (
        "import sys, crossattn; from crossattn.cli import main; "
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out: main(['--help'])\n"
        "assert 'train' in out.getvalue(), out.getvalue()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_export_resolves():
    missing = [name for name in crossattn.__all__ if not hasattr(crossattn, name)]
    assert missing == []
    assert set(crossattn.__all__) <= set(dir(crossattn))


def test_unknown_attribute_is_an_attribute_error():
    try:
        crossattn.no_such_thing  # noqa: B018
    except AttributeError as err:
        assert "no_such_thing" in str(err)
    else:
        raise AssertionError("crossattn.no_such_thing did not raise")


def test_every_command_module_exists(capsys):
    import importlib

    for name, (module, _) in COMMANDS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.run), name
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == crossattn.__version__
