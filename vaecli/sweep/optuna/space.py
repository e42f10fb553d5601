"""Hydra sweep overrides as an Optuna search space, and a trial's values back as overrides.

``x=tag(log, interval(a, b))`` samples a float on a log scale, ``interval(a, b)`` a float,
``range(a, b[, step])`` an integer (or float) from Python's range, so ``b`` itself is never
drawn, and ``choice(...)`` or ``a,b,c`` one of the listed values. Any other override goes to
every trial unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


@dataclass(frozen=True)
class SearchSpace:
    """Where Optuna samples (by config key) and the overrides every trial shares."""

    distributions: dict[str, BaseDistribution]
    keys: dict[str, str]  # config key -> the key as typed, so "+x=..." still adds x
    fixed: tuple[str, ...]

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """One trial's overrides: the shared ones, then its sampled values."""
        return [*self.fixed, *(f"{self.keys[name]}={override_value(value)}" for name, value in params.items())]

    def probes(self) -> list[list[str]]:
        """Trials worth composing before a search starts, so a bad key or value fails before any folder.

        Every choice and both ends of every range or interval, one key at a time, the other keys
        at their first value: a handful of configs, however many trials the search will run.
        """
        first = {name: edges(distribution)[0] for name, distribution in self.distributions.items()}
        probes: list[list[str]] = []
        for name, distribution in self.distributions.items():
            for value in edges(distribution):
                trial = self.overrides({**first, name: value})
                if trial not in probes:
                    probes.append(trial)
        return probes


def search_space(overrides: Sequence[str], params: Mapping[str, Any] | None = None) -> SearchSpace:
    """Parse ``params`` (``hydra.sweeper.params``: key -> sweep) then ``overrides``; a later override of
    the same key wins, so the command line beats config params."""
    from_config = [f"{key}={value}" for key, value in (params or {}).items()]
    latest: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides([*from_config, *overrides]):
        latest.pop(override.key_or_group, None)  # re-inserted last: command line order decides
        latest[override.key_or_group] = override
    distributions, keys, fixed = {}, {}, []
    for name, override in latest.items():
        if override.is_sweep_override():
            distributions[name] = distribution(override)
            keys[name] = override.get_key_element()
        else:
            fixed.append(override.input_line or f"{override.get_key_element()}={override.get_value_element_as_str()}")
    return SearchSpace(distributions, keys, tuple(fixed))


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution for one sweep override; a clear error for sweeps it cannot sample."""
    text = override.input_line or override.key_or_group
    try:
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            raise ValueError("glob() cannot be sampled; list the options with choice(...)")
        if override.is_choice_sweep():
            return CategoricalDistribution(categories(override))
        if override.is_range_sweep():
            return range_distribution(override)
        if override.is_interval_sweep():
            interval = override.value()
            return FloatDistribution(float(interval.start), float(interval.end), log="log" in interval.tags)
    except ValueError as error:
        raise ValueError(f"{text}: {error}") from None
    raise ValueError(f"{text}: this sweep cannot be sampled by the Optuna sweeper")


def categories(override: Override) -> list[Any]:
    """Numbers and booleans stay typed (Optuna reports them as such); anything else is kept as override text."""
    values = list(override.sweep_iterator())
    texts = list(override.sweep_string_iterator())
    return [value if isinstance(value, int | float | bool) else text for value, text in zip(values, texts)]


def range_distribution(override: Override) -> BaseDistribution:
    sweep = override.value()
    if sweep.shuffle:
        return CategoricalDistribution(categories(override))
    numbers = sweep.range()  # Python's range for integers (never listed: it may be long), else a float range
    if isinstance(numbers, range):
        if not numbers:
            raise ValueError("the range is empty")
        low, high = sorted((numbers[0], numbers[-1]))
        return IntDistribution(low, high, step=abs(numbers.step))
    values = [float(value) for value in numbers]
    if not values:
        raise ValueError("the range is empty")
    return FloatDistribution(min(values), max(values), step=abs(float(sweep.step)))


def edges(distribution: BaseDistribution) -> list[Any]:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def override_value(value: Any) -> str:
    """A sampled value as Hydra's override grammar reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)
