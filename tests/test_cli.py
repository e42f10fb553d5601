"""The `vae` entry points: help everywhere, a lean start-up, and the data command."""

import subprocess
import sys

from tests.conftest import invoke

COMMANDS = ["train", "sweep", "reconstruct", "traverse", "sample", "interpolate", "embed", "encode", "evaluate", "data"]


def test_help_lists_the_commands(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_every_command_has_help_with_examples(runner):
    for command in COMMANDS:
        result = invoke(runner, command, "--help")
        assert result.exit_code == 0 and "Examples" in result.stdout, command


def test_help_does_not_import_torch_or_hydra():
    code = (
        "import sys, vaecli.cli.app; heavy = ('torch', 'hydra', 'plotnine', 'pandas', 'tensorboard', 'optuna'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_python_dash_m_works():
    done = subprocess.run([sys.executable, "-m", "vaecli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("vaecli ")


def test_unknown_command_is_a_usage_error(runner):
    assert runner.invoke(app_for_test(), ["trian"]).exit_code == 2


def test_data_command_verifies_files(runner, data_root):
    result = invoke(runner, "data", "--root", str(data_root))
    assert result.exit_code == 0 and "4 verified files" in result.stdout
    bad = invoke(runner, "data", "cifar")
    assert bad.exit_code == 2 and "unknown dataset 'cifar'" in bad.stderr


def app_for_test():
    from vaecli.cli.app import app

    return app
