"""Between Typer and Hydra: check overrides with the compose API, then run Hydra's own main.

Composing first means a bad key or value is reported in one line before Hydra creates any
output folder; running ``hydra.main`` afterwards keeps everything users know from Hydra
(``.hydra/``, logging, launchers, sweeps).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig

from vaecli.config import schema as config_module
from vaecli.errors import UsageError, first_line

COMMAND_ENV = "VAECLI_COMMAND"  # JSON list: the argv of the `vae` process that launched this run

CFG_CHOICES = ("job", "hydra", "all")
CONFIG_MODULE, CONFIG_NAME = "vaecli.conf", "config"


def override_key(item: str) -> str:
    """The key an override sets: ``+a.b=1``, ``~a.b`` and ``a.b=1`` all give ``a.b``."""
    return item.lstrip("+~").split("=", 1)[0]


def has_key(overrides: Sequence[str], key: str) -> bool:
    return any(override_key(item) == key for item in overrides)


def quote_value(value: str) -> str:
    """A path as a Hydra override value, whatever characters it holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def describe(error: BaseException) -> str:
    """One line for a Hydra/OmegaConf error, naming the key and the problem."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = error.__cause__ or error
    key = getattr(cause, "full_key", None) or ""
    if isinstance(cause, ConfigAttributeError | ConfigKeyError):
        return f"unknown config key '{key}': check the spelling (`vae train --cfg job` prints every key)"
    if isinstance(cause, ValidationError):
        return f"bad value for {key}: {first_line(cause.msg if hasattr(cause, 'msg') else str(cause))}"
    if isinstance(error, MissingConfigException):
        options = [name for name in getattr(error, "options", None) or [] if not name.endswith("_schema")]  # registry
        missing = getattr(error, "missing_cfg_file", None) or first_line(str(error))
        hint = f"; choose one of: {', '.join(options)}" if options else ""
        return f"no config '{missing}'{hint}"
    if isinstance(error, OverrideParseException):
        return f"cannot parse override '{error.override}': {first_line(str(error))}"
    if str(error).startswith("Ambiguous value"):
        return f"{first_line(str(error))}: `vae train` takes one value per key; `vae sweep` runs one model per value"
    return first_line(str(error)) or type(error).__name__


@contextmanager
def _initialized():
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def compose(overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """The config these overrides give, checked against the schema and the value rules."""
    return compose_all([overrides], with_hydra)[0]


def compose_all(override_lists: Iterable[Sequence[str]], with_hydra: bool = False) -> list[DictConfig]:
    """:func:`compose` for each list of overrides (a sweep's members), under one Hydra initialisation."""
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_module.register()
    configs = []
    try:
        with _initialized():
            for overrides in override_lists:
                cfg = hydra_compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=with_hydra)
                config_module.check_values(cfg)
                configs.append(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        raise UsageError(describe(error)) from None
    return configs


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Every member's override list for a sweep (Hydra's own grid expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except HydraException as error:
        raise UsageError(describe(error)) from None
    return [list(member) for batch in batches for member in batch]


def print_config(
    overrides: Sequence[str], cfg_flag: str, resolve: bool, task: Callable, multirun: bool = False
) -> None:
    """Hydra's own ``--cfg job|hydra|all`` output, after the overrides were checked."""
    if cfg_flag not in CFG_CHOICES:
        raise UsageError(f"--cfg {cfg_flag} is not one of {', '.join(CFG_CHOICES)}")
    compose(overrides)
    flags = [*(["--multirun"] if multirun else []), "--cfg", cfg_flag, *(["--resolve"] if resolve else [])]
    run_hydra(task, [*flags, *overrides])


def describe_failure(error: BaseException) -> str:
    """One line for an error that escaped Hydra's main."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, HydraException | OmegaConfBaseException):
        return describe(error)
    return first_line(str(error)) or type(error).__name__


def hydra_main(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """``task`` under Hydra's main, to call inside :func:`hydra_call`; launchers pickle ``task`` by its
    module and name, so it must be a module-level function."""
    import hydra

    return hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base="1.3")(task)


@contextmanager
def hydra_call(arguments: Iterable[str]) -> Iterator[None]:
    """Inside it, Hydra's main runs as if from a shell with ``arguments``, raising (not exiting) on errors.

    Hydra's own errors become a :class:`UsageError`; argv, the environment and stderr are put back after.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    saved_argv, saved_stderr = sys.argv, sys.stderr
    # the user's command line, for provenance.json of every member, whichever process runs it
    handed_on = {"HYDRA_FULL_ERROR": "1", COMMAND_ENV: json.dumps(saved_argv)}
    saved_environment = {name: os.environ.get(name) for name in handed_on}
    sys.argv = ["vae", *arguments]
    os.environ.update(handed_on)
    sys.stderr = _WithoutHydraJobErrors(saved_stderr)
    try:
        yield
    except (HydraException, OmegaConfBaseException) as error:
        raise UsageError(describe(error)) from None
    finally:
        sys.argv, sys.stderr = saved_argv, saved_stderr
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_hydra(task: Callable[[DictConfig], Any], arguments: Iterable[str]) -> Any:
    """Call ``hydra.main`` with ``task`` as if from a shell (see :func:`hydra_call`)."""
    main = hydra_main(task)
    with hydra_call(arguments):
        return main()


class _WithoutHydraJobErrors:
    """stderr minus Hydra's "Error executing job with overrides: ..." line: the CLI says it in one line."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides:"):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
