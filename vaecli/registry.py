"""A registry maps a config name to what builds it: models, datasets, objectives, metrics.

Each layer keeps its own registry (``vaecli.models.registry.MODELS``, ...). Its built-ins are the
modules of its folder, found and imported the first time the registry is read, and each module
registers what it holds; so adding a model is one module in ``vaecli/models/`` that calls
``MODELS.register(...)``, with no edit anywhere else. An entry that comes with a config schema
(a dataclass) is stored in Hydra's ConfigStore as ``<group>/<name>_schema`` (what a shipped
``conf/<group>/<name>.yaml`` names in its defaults) and, when no YAML file exists, as
``<group>/<name>`` itself, so ``model=<name>`` works for an entry registered from a notebook or test.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from vaecli.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to entries for one kind of thing, with the config key that picks one (``model.name``)."""

    def __init__(self, kind: str, key: str, package: str, group: str | None = None):
        self.kind, self.key, self.package, self.group = kind, key, package, group
        self._entries: dict[str, T] = {}
        self._schemas: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, entry: T, schema: Any = None) -> T:
        """Add ``entry`` under ``name`` (a later registration of the same name replaces it)."""
        self._entries[name] = entry
        if schema is not None:
            self._schemas[name] = schema
        if schema is not None and self.group is not None:
            store_schema(self.group, name, schema)
        return entry

    def unregister(self, name: str) -> None:
        """Take ``name`` out, its config nodes too: Hydra pickles the whole ConfigStore into every
        job a launcher submits, and a worker process must be able to import each node's schema."""
        self._entries.pop(name, None)
        if self._schemas.pop(name, None) is not None and self.group is not None:
            unstore_schema(self.group, name)

    def schema(self, name: str) -> Any:
        """The config schema ``name`` was registered with (None when it has none)."""
        self.load()
        return self._schemas.get(name)

    def with_defaults(self, node: Any) -> Any:
        """A stored group node (``cfg.model``) with every key its schema has and the node lacks: a config
        written before a key existed gets that key's default, as :data:`vaecli.config.schema.LATER_KEYS`."""
        from omegaconf import OmegaConf

        schema = self.schema(str(node.get("name")))
        if schema is None:
            return node
        defaults = OmegaConf.to_container(OmegaConf.structured(schema))
        return OmegaConf.merge(defaults, node)

    def load(self) -> Registry[T]:
        """Import every module of the registry's package once: the built-ins register themselves."""
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
        return self

    def entry(self, name: str) -> T:
        """The entry for ``name``; an unknown name is a usage error that lists the known ones."""
        self.load()
        if name not in self._entries:
            raise UsageError(f"{self.key}={name} is not a known {self.kind}: known are {', '.join(self.names())}")
        return self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        """As a dict's get: the entry, or ``default`` for an unknown name."""
        self.load()
        return self._entries.get(name, default)

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        self.load()
        return self._entries[name]

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def unstore_schema(group: str, name: str) -> None:
    """Remove what :func:`store_schema` stored (ConfigStore itself has no removal)."""
    from hydra.core.config_store import ConfigStore

    node = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node.get(part, {})
    for key in (f"{name}_schema.yaml", f"{name}.yaml"):
        node.pop(key, None)


def store_schema(group: str, name: str, schema: Any) -> None:
    """``<group>/<name>_schema`` in Hydra's ConfigStore, and ``<group>/<name>`` unless a YAML file names it."""
    from importlib.util import find_spec
    from pathlib import Path

    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group=group, name=f"{name}_schema", node=schema)
    conf = find_spec("vaecli.conf")  # its folder, without importing it (its __init__ loads the registries)
    folders = conf.submodule_search_locations or [] if conf else []
    if not any((Path(folder) / group / f"{name}.yaml").is_file() for folder in folders):
        store.store(group=group, name=name, node=schema)
