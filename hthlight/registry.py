"""Component registries: built-ins declared here, plugins discovered through entry points.

One :class:`Registry` per kind (DESIGN.md, "Names that everything relies on"). Built-ins
are declared as ``"module:attribute"`` strings and plugins as entry points, so listing
names (``hthlight components``, :func:`available`) imports nothing; a component's module is
imported the first time it is built. A plugin that fails to import is recorded with its
error and reported, never crashes the CLI. Set ``HTHLIGHT_NO_PLUGINS=1`` to skip plugin
discovery altogether.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."hthlight.mixers"]
    my_mixer = "my_package.mixer:MyMixer"
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from hthlight.errors import ConfigError, HthlightError

PLUGINS_ENV = "HTHLIGHT_NO_PLUGINS"

#: kind -> entry-point group
KINDS: dict[str, str] = {
    "mixer": "hthlight.mixers",
    "scan": "hthlight.scans",
    "conditioner": "hthlight.conditioners",
    "text_encoder": "hthlight.text_encoders",
    "vae": "hthlight.vaes",
    "scheduler": "hthlight.schedulers",
}

#: kind -> name -> "module:attribute" of the built-in components
BUILTINS: dict[str, dict[str, str]] = {
    "mixer": {
        "attention": "hthlight.mixers.attention:AttentionMixer",
        "hydra": "hthlight.mixers.hydra:HydraMixer",
        "ssm": "hthlight.mixers.ssm:SSMMixer",
        "bi_ssm": "hthlight.mixers.ssm:BiSSMMixer",
    },
    "scan": {
        "h": "hthlight.scans:HorizontalScan",
        "v": "hthlight.scans:VerticalScan",
        "ht": "hthlight.scans:HorizontalScan",
        "vt": "hthlight.scans:VerticalScan",
        "th": "hthlight.scans:TemporalHorizontalScan",
        "tv": "hthlight.scans:TemporalVerticalScan",
    },
    "conditioner": {
        "class_label": "hthlight.conditioning.labels:ClassLabelConditioner",
        "text_embedding": "hthlight.conditioning.text:TextEmbeddingConditioner",
    },
    "text_encoder": {
        "t5": "hthlight.conditioning.text_encoders:T5TextEncoder",
        "clip": "hthlight.conditioning.text_encoders:CLIPTextEncoder",
        "hf": "hthlight.conditioning.text_encoders:HFTextEncoder",
    },
    "vae": {
        "identity": "hthlight.vae.identity:IdentityVAE",
        "framewise": "hthlight.vae.framewise:FrameWiseVAE",
        "diffusers_video": "hthlight.vae.video_autoencoder:DiffusersVideoVAE",
        "autoencoder_kl": "hthlight.vae.autoencoder_kl:AutoencoderKLVAE",
    },
    "scheduler": {
        "rectified_flow": "hthlight.diffusion.rectified_flow:RectifiedFlow",
        "ddpm": "hthlight.diffusion.ddpm:DDPM",
    },
}

BUILT_IN = "built-in"


class RegistryError(ConfigError):
    """A component cannot be found, loaded or registered."""


class UnknownComponentError(RegistryError):
    """No component of that name is registered."""


class DuplicateComponentError(RegistryError):
    """Two sources register the same name for one kind."""


class ComponentLoadError(RegistryError):
    """A component's module failed to import."""


@dataclass
class Entry:
    """One registered component: where it comes from and, once imported, the object."""

    kind: str
    name: str
    target: str | Callable[..., Any]
    source: str = BUILT_IN
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    _loaded: Any = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"failed: {self.error}"
        return "loaded" if self._loaded is not None or callable(self.target) else "not loaded"

    def load(self) -> Any:
        """Import and return the component (a class or factory); record and raise on failure."""
        if callable(self.target):
            return self.target
        if self._loaded is None:
            if self.error is not None:
                raise ComponentLoadError(self._failure_message())
            try:
                self._loaded = _import_target(self.target)
            except Exception as exc:  # a plugin may raise anything at import time
                self.error = f"{type(exc).__name__}: {exc}"
                missing = self.missing_requirements()
                if missing:
                    self.error += f"; not installed: {', '.join(missing)}"
                raise ComponentLoadError(self._failure_message()) from exc
        return self._loaded

    def _failure_message(self) -> str:
        return f"{self.kind} {self.name!r} from {self.source} failed to load: {self.error}"

    def missing_requirements(self) -> list[str]:
        """Requirements of the providing distribution that are not installed (with their extra)."""
        return missing_requirements(self.distribution) if self.distribution else []


def missing_requirements(distribution: str) -> list[str]:
    """``["fla-core (extra 'gpu': pip install 'dist[gpu]')", ...]`` for uninstalled requirements."""
    import re

    from packaging.requirements import InvalidRequirement, Requirement

    missing = []
    for text in metadata.requires(distribution) or []:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", str(requirement.marker or ""))
        if requirement.marker is not None and extra is None and not requirement.marker.evaluate():
            continue
        try:
            metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            hint = f" (extra '{extra.group(1)}': pip install '{distribution}[{extra.group(1)}]')" if extra else ""
            missing.append(requirement.name + hint)
    return list(dict.fromkeys(missing))


def _import_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj


def plugins_enabled() -> bool:
    return os.environ.get(PLUGINS_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


class Registry:
    """Names of one kind of component, mapped to the classes or factories that build them."""

    def __init__(self, kind: str, group: str, builtins: Mapping[str, str] = ()) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] = {}
        for name, target in dict(builtins).items():
            self._add(Entry(kind, name, target))
        self._discovered = False

    # ----------------------------------------------------------------- registration
    def register(self, name: str, target: Callable[..., Any] | None = None, *, source: str | None = None):
        """Register ``target`` under ``name``; usable as a decorator when ``target`` is omitted."""

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            where = source or f"code ({getattr(obj, '__module__', '?')})"
            self._ensure_discovered()
            self._add(Entry(self.kind, name, obj, source=where))
            return obj

        return add if target is None else add(target)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _add(self, entry: Entry) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None and existing.target != entry.target:
            raise DuplicateComponentError(
                f"{self.kind} {entry.name!r} is registered twice: by {existing.source} and by "
                f"{entry.source}; uninstall one of them or rename the component"
            )
        if existing is None:
            self._entries[entry.name] = entry

    def _ensure_discovered(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        if not plugins_enabled():
            return
        seen: set[tuple[str, str]] = set()
        for ep in metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            version = dist.version if dist is not None else None
            source = f"distribution {dist_name} {version}" if dist_name else f"entry point {ep.value}"
            self._add(Entry(self.kind, ep.name, ep.value, source, dist_name, version))

    # ----------------------------------------------------------------- lookup
    def names(self) -> list[str]:
        self._ensure_discovered()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        self._ensure_discovered()
        for name in sorted(self._entries):
            yield self._entries[name]

    def entry(self, name: str) -> Entry:
        self._ensure_discovered()
        try:
            return self._entries[name]
        except KeyError:
            origin = _PROVENANCE.get((self.kind, name))
            hint = f"; the checkpoint was made with it from {origin}: install that" if origin else ""
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}{hint}; registered {self.kind}s: {', '.join(self.names()) or '(none)'}"
                " (or give class_path: package.module.Class)"
            ) from None

    def get(self, name: str) -> Callable[..., Any]:
        return self.entry(name).load()

    def build(self, name: str, **kwargs: Any) -> Any:
        return call_with_checked_kwargs(self.get(name), kwargs, what=f"{self.kind} {name!r}")

    def __contains__(self, name: str) -> bool:
        self._ensure_discovered()
        return name in self._entries


#: (kind, name) -> source, for components a loaded checkpoint was trained with
_PROVENANCE: dict[tuple[str, str], str] = {}


def plugin_provenance() -> dict[str, str]:
    """``{"kind:name": "distribution NAME VERSION"}`` of every plugin component loaded so far.

    Saved in checkpoints, so a checkpoint whose plugin is missing says which one to install.
    """
    return {
        f"{kind}:{entry.name}": entry.source
        for kind, reg in _REGISTRIES.items()
        for entry in reg._entries.values()
        if entry.distribution and entry._loaded is not None
    }


def remember_provenance(provenance: Mapping[str, str]) -> None:
    """Record where a checkpoint's plugin components came from (see :func:`plugin_provenance`)."""
    for key, source in provenance.items():
        kind, _, name = key.partition(":")
        _PROVENANCE[(kind, name)] = source


_REGISTRIES: dict[str, Registry] = {kind: Registry(kind, group, BUILTINS[kind]) for kind, group in KINDS.items()}


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`KINDS`)."""
    try:
        return _REGISTRIES[kind]
    except KeyError:
        raise RegistryError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}") from None


def available(kind: str) -> list[str]:
    """Registered names of ``kind``, built-ins and plugins, without importing any plugin."""
    return registry(kind).names()


def build(kind: str, name: str, **kwargs: Any) -> Any:
    """Build the component ``name`` of ``kind`` with ``kwargs``."""
    return registry(kind).build(name, **kwargs)


def register(kind: str, name: str, target: Callable[..., Any] | None = None):
    """Register a component in-process (plugins normally use entry points instead)."""
    return registry(kind).register(name, target)


# --------------------------------------------------------------------- specs in configs
ComponentSpec = str | dict[str, Any]
"""How configs name a component: ``"hydra"``, ``{"name": "hydra", "d_state": 16}``, or
``{"class_path": "pkg.module.Class", "init_args": {...}}``."""


def resolve(kind: str, spec: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    """Split a spec into the factory it names and its keyword arguments (nothing is built)."""
    if isinstance(spec, str):
        return registry(kind).get(spec), {}
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "class_path" in spec:
            class_path = spec.pop("class_path")
            kwargs = dict(spec.pop("init_args", None) or {}, **spec)
            module, _, attr = class_path.rpartition(".")
            try:
                target = _import_target(f"{module}:{attr}")
            except Exception as exc:
                raise RegistryError(
                    f"{kind} class_path {class_path!r} cannot be imported: {type(exc).__name__}: {exc}"
                ) from exc
            return target, kwargs
        if "name" in spec:
            name = spec.pop("name")
            return registry(kind).get(name), spec
        raise ConfigError(
            f"a {kind} spec needs 'name' (one of: {', '.join(available(kind))}) or 'class_path', got {spec!r}"
        )
    if callable(spec):
        return spec, {}
    raise ConfigError(f"a {kind} spec must be a name, a mapping with 'name' or 'class_path'; got {spec!r}")


def spec_name(spec: Any) -> str:
    """A short human-readable name for a spec (for logs and summaries)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return str(spec.get("name") or spec.get("class_path"))
    return getattr(spec, "__name__", type(spec).__name__)


def build_from_spec(kind: str, spec: Any, **defaults: Any) -> Any:
    """Build a component from a config spec; ``defaults`` (e.g. ``dim``) yield to the spec's own kwargs."""
    if not isinstance(spec, (str, Mapping)) and not callable(spec):
        return spec  # already a built component
    target, kwargs = resolve(kind, spec)
    return call_with_checked_kwargs(target, {**defaults, **kwargs}, what=f"{kind} {spec_name(spec)!r}")


def accepted_kwargs(target: Callable[..., Any]) -> list[str] | None:
    """Keyword arguments ``target`` accepts, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_kwargs(target: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    allowed = accepted_kwargs(target)
    if allowed is None:
        return
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"{what} got unknown argument(s) {', '.join(unknown)}; it accepts: {', '.join(allowed)}")


def call_with_checked_kwargs(target: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> Any:
    _check_kwargs(target, kwargs, what)
    return target(**kwargs)


__all__ = [
    "BUILTINS",
    "KINDS",
    "PLUGINS_ENV",
    "ComponentLoadError",
    "ComponentSpec",
    "DuplicateComponentError",
    "Entry",
    "HthlightError",
    "Registry",
    "RegistryError",
    "UnknownComponentError",
    "available",
    "build",
    "build_from_spec",
    "register",
    "registry",
    "resolve",
]
