"""Discovers attention variants through the ``attnzoo`` entry-point group.

Every plugin, built-in or third-party, takes the same path: its entry point is loaded
and its hook called on its own, so one broken plugin is recorded and reported while
the others keep working (``strict=True`` or ``ATTNZOO_STRICT_PLUGINS=1`` makes any
failure fatal). ``ATTNZOO_PLUGINS`` / ``ATTNZOO_DISABLE_PLUGINS`` choose what loads.

A plugin is other people's code running inside every attnzoo command, so loading one is
fenced: anything it raises (``sys.exit()`` included) fails that plugin only; what it prints
goes to stderr, so ``--json`` output stays valid; global torch state it changes (default
dtype, grad mode, random state, ...) is put back and reported; a slow one is named with its time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy
import torch

from attnzoo.contract.hookspecs import PROJECT, Hookspecs, Option, Variant
from attnzoo.contract.variant import AttentionVariant, ExplicitPath, explicit_attention  # noqa: F401 (re-exported)
from attnzoo.errors import PluginError, Stopped, did_you_mean
from attnzoo.values import convert, yaml_word

CORE_DISTRIBUTION = "attnzoo"  # plugins shipped in this distribution are the built-ins
SLOW_LOAD_SECONDS = 2.0  # a plugin slower than this to load gets a notice: every command pays for it
PARAMETER_NOISE = 0.05  # moves learnable parameters off their initial value before paths are compared


@dataclass
class PluginInfo:
    name: str  # entry-point name
    module: str
    distribution: str
    version: str
    builtin: bool
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    variants: list[str] = field(default_factory=list)
    load_seconds: float | None = None  # import, hook and load-time check together
    warnings: list[str] = field(default_factory=list)  # loaded, but changed global torch state (put back)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def strict_from_env() -> bool:
    return os.environ.get("ATTNZOO_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes")


def discover_entry_points() -> list[metadata.EntryPoint]:
    seen, found = set(), []
    for ep in metadata.entry_points(group=PROJECT):
        if (ep.name, ep.value) not in seen:  # editable installs can list a plugin twice
            seen.add((ep.name, ep.value))
            found.append(ep)
    return found


def _distribution(ep) -> tuple[str, str]:
    """(distribution name, version) that provides an entry point's module."""
    dist = getattr(ep, "dist", None)
    if dist is not None:
        return dist.metadata["Name"], dist.version
    top = ep.value.split(":")[0].split(".")[0]
    names = _packages_distributions().get(top)
    if names:
        return names[0], metadata.version(names[0])
    return "(unknown)", "(unknown)"


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def coerce_option(option: Option, value: Any) -> Any:
    """Return `value` converted to the option's type, or raise ValueError saying why. The
    conversion is the one recipe keys get (attnzoo.values): `n=2.0` is 2 for both."""
    if value is None and option.default is None:
        return None
    if option.choices is not None:
        value = yaml_word(value, option.choices)
    out = convert(value, option.type)
    if option.choices is not None and out not in option.choices:
        allowed = ", ".join(map(str, option.choices))
        raise ValueError(f"{out!r} is not allowed; choose one of: {allowed}{did_you_mean(out, option.choices)}")
    return out


class Registry:
    """The variants and plugins found by one load. Build with :func:`load_registry`.
    `rejected` holds the variants a plugin registered before its load failed, with the reason,
    so that `attnzoo check-plugin` can still run the kit on them and show why."""

    def __init__(self, variants: dict[str, Variant], plugins: list[PluginInfo],
                 rejected: dict[str, tuple[Variant, str]] | None = None):
        self.variants = variants
        self.plugins = plugins
        self.rejected = dict(rejected or {})

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def get(self, name: str) -> Variant:
        if name not in self.variants:
            available = ", ".join(sorted(self.variants)) or "(none)"
            raise PluginError(
                f"Unknown attention variant {name!r}{did_you_mean(name, self.variants)}. "
                f"Available: {available}. Run `attnzoo plugins` to see every plugin and its status."
            )
        return self.variants[name]

    def get_for_checking(self, name: str) -> Variant:
        """The loaded variant `name`, else one whose plugin failed to load after registering it
        (what the conformance kit may still examine). Unknown: a PluginError that also names the
        plugins that failed before registering anything, since one of them may provide it."""
        if name in self.variants or name not in self.rejected:
            try:
                return self.get(name)
            except PluginError as exc:
                silent = [p for p in self.failures if not p.variants]
                if not silent:
                    raise
                listed = "; ".join(f"{p.name!r} ({p.error})" for p in silent)
                raise PluginError(f"{exc} These plugins failed before registering any variant, and may be "
                                  f"the one that provides it: {listed}") from None
        return self.rejected[name][0]

    def resolve_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Defaults merged with `options`, each checked and converted; all problems at once."""
        return resolve_variant_options(self.get(name), options)

    def kernel(self, name: str, options: dict[str, Any] | None = None) -> KernelFactory:
        """The variant `name` resolved with its checked options: what the ViT builds its kernels with."""
        return KernelFactory(self.get(name), self.resolve_options(name, options or {}))

    def create(self, name: str, *, head_dim: int, num_heads: int, **options) -> torch.nn.Module:
        return self.kernel(name, options)(head_dim, num_heads)


def resolve_variant_options(variant: Variant, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with `options`, each checked and converted; all problems at once."""
    name = variant.name
    problems, resolved = [], {o.name: o.default for o in variant.options}
    allowed = [o.name for o in variant.options]
    for key, value in options.items():
        option = variant.option(key)
        if option is None:
            listed = ", ".join(allowed) or "none"
            problems.append(
                f"variant {name!r} has no option {key!r}{did_you_mean(key, allowed)}; its options are: {listed}"
            )
            continue
        try:
            resolved[key] = coerce_option(option, value)
        except ValueError as exc:
            problems.append(f"option {key!r} of variant {name!r}: {exc}")
    if problems:
        raise PluginError("; ".join(problems))
    return resolved


class KernelFactory:
    """A variant with its resolved options, called as ``factory(head_dim, num_heads)`` for
    one fresh kernel (one per block), like timm's ``attn_layer``. The model takes this (or
    any callable of that shape) and knows nothing of plugins. ``explicit()`` gives the same
    variant forced through its explicit path."""

    def __init__(self, variant: Variant, options: dict[str, Any], explicit: bool = False):
        self.variant, self.options, self.is_explicit = variant, dict(options), explicit

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def label(self) -> str:
        """Who to blame when a kernel fails: the variant, its plugin and distribution."""
        return variant_label(self.variant)

    def __call__(self, head_dim: int, num_heads: int) -> torch.nn.Module:
        kernel = self.variant.factory(head_dim=head_dim, num_heads=num_heads, **self.options)
        return ExplicitPath(kernel) if self.is_explicit else kernel

    def explicit(self) -> KernelFactory:
        """The same variant run through its explicit path: the naive reference of every variant."""
        return KernelFactory(self.variant, self.options, explicit=True)

    def __repr__(self) -> str:
        return f"KernelFactory({self.name!r}, {self.options!r}{', explicit' if self.is_explicit else ''})"


def variant_label(variant: Variant) -> str:
    """"variant 'x' (plugin 'p', dist 1.0)": the name an error about a variant gives."""
    if not variant.plugin:  # built by hand, not loaded from a plugin
        return f"variant {variant.name!r}"
    return f"variant {variant.name!r} (plugin {variant.plugin!r}, {variant.distribution} {variant.version})"


def perturb_parameters(module: torch.nn.Module, scale: float = PARAMETER_NOISE) -> None:
    """Move parameters off their initial values, reproducibly: a gain initialised to 1, or an
    identity-initialised mixing matrix, that only one path applies would otherwise go unnoticed."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.add_(scale * noise.to(p.dtype))


def _option_samples(variant: Variant) -> list[dict[str, Any]]:
    """The defaults, then each choice of each option with the others at their defaults."""
    defaults = {o.name: o.default for o in variant.options}
    samples = [defaults]
    for o in variant.options:
        values = o.choices if o.choices is not None else ((True, False) if o.type is bool else ())
        samples += [{**defaults, o.name: value} for value in values if value != o.default]
    return samples


def _check_at_registration(variant: Variant) -> Variant:
    """Smoke tests at registration, so a broken variant fails when plugins load, not after
    training: forward's shape, attention_weights' shape and its agreement with forward
    through the explicit path. Returns the variant with ``fast_path`` and ``has_parameters``
    derived from its code; a declared value that contradicts the code is an error."""
    def fail(problem: str):
        raise PluginError(f"variant {variant.name!r}: {problem}")

    module = variant.factory(head_dim=8, num_heads=2, **_option_samples(variant)[0]).eval()
    if isinstance(module, torch.nn.Module):
        perturb_parameters(module)  # compared at initialisation, an identity mixing matrix hides a wrong forward
    if isinstance(module, AttentionVariant) and type(module).explicit is not AttentionVariant.explicit:
        # No check, benchmark or FLOP count would run the override: refuse it rather than let
        # the variant be tested against a reference its author did not write.
        fail("overrides explicit(q, k, v), which nothing consults: the explicit path is "
             "attention_weights(q, k) @ values(v); put that math in attention_weights (and values, "
             "to transform v) and drop the override")
    q, k, v = torch.randn(3, 2, 2, 5, 8).unbind(0)
    with torch.no_grad():
        out = module(q, k, v)
        if not isinstance(out, torch.Tensor) or out.shape != q.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            fail(f"forward(q, k, v) returned shape {got}, expected {tuple(q.shape)} (batch, heads, tokens, head_dim)")
        if not callable(getattr(module, "attention_weights", None)):
            fail("the module has no attention_weights(q, k); every variant exposes the weights it applies "
                 "(subclass attnzoo.AttentionVariant and implement it)")
        weights = module.attention_weights(q, k)
        expected = (2, 2, 5, 5)
        if not isinstance(weights, torch.Tensor) or weights.shape != expected:
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            fail(f"attention_weights(q, k) returned shape {got}, expected {expected} (batch, heads, tokens, tokens)")
        explicit = explicit_attention(module, q, k, v)
    gap = (explicit - out).abs().max().item()
    if not gap <= 1e-3 * max(1.0, out.abs().max().item()):  # wrong weights, not rounding (the kit is stricter)
        fail(f"forward(q, k, v) and the explicit path attention_weights(q, k) @ values(v) differ by up to "
             f"{gap:.3g}: the weights it reports are not the ones it applies")
    derived = {"fast_path": _overrides_forward(module),
               "has_parameters": any(_has_parameters(variant, options) for options in _option_samples(variant))}
    for flag, value in derived.items():
        declared = getattr(variant, flag)
        if declared is not None and declared != value:
            fail(f"registered with {flag}={declared}, but its code says {value} ({_FLAG_MEANING[flag]}); "
                 f"drop the {flag}= argument, it is derived")
    return dataclasses.replace(variant, **derived)


_FLAG_MEANING = {"fast_path": "whether the module overrides AttentionVariant.forward",
                 "has_parameters": "whether the module has parameters for some option values"}


def _overrides_forward(module: torch.nn.Module) -> bool:
    return type(module).forward is not AttentionVariant.forward


def _has_parameters(variant: Variant, options: dict[str, Any]) -> bool:
    try:
        module = variant.factory(head_dim=8, num_heads=2, **options)
    except Exception:  # a choice this machine cannot build (e.g. a GPU-only backend) tells nothing
        return False
    return any(True for _ in module.parameters())


def load_registry(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    *,
    strict: bool | None = None,
    only: set[str] | None = None,
    disable: set[str] | None = None,
    warn: bool = True,
) -> Registry:
    """Load plugins one by one. Arguments left as None come from the environment."""
    strict = strict_from_env() if strict is None else strict
    only = _env_list("ATTNZOO_PLUGINS") if only is None else only
    disable = (_env_list("ATTNZOO_DISABLE_PLUGINS") or set()) if disable is None else disable
    entry_points = discover_entry_points() if entry_points is None else list(entry_points)
    # Built-ins first, so a third party cannot shadow 'softmax' by loading earlier.
    entry_points.sort(key=lambda ep: (_distribution(ep)[0] != CORE_DISTRIBUTION, ep.name))

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(Hookspecs)
    variants: dict[str, Variant] = {}
    rejected: dict[str, tuple[Variant, str]] = {}
    plugins: list[PluginInfo] = []

    with _watch_for_ctrl_c() as ctrl_c:
        for ep in entry_points:
            dist, version = _distribution(ep)
            info = PluginInfo(ep.name, ep.value, dist, version, builtin=dist == CORE_DISTRIBUTION)
            plugins.append(info)
            if ep.name in disable or (only is not None and not info.builtin and ep.name not in only):
                info.status = "disabled"
                continue
            _load_fenced(pm, ep, info, variants, rejected, ctrl_c, strict)

    registry = Registry(variants, plugins, rejected)
    if warn:
        _print_notices(registry)
    return registry


def _load_fenced(pm, ep, info: PluginInfo, variants: dict[str, Variant],
                 rejected: dict[str, tuple[Variant, str]], ctrl_c: list | None, strict: bool) -> None:
    """Load one plugin so that nothing it does reaches the host: whatever it raises fails it
    alone, its prints go to stderr, and the global torch state it changed is put back."""
    stage, staged = ["at import"], {}
    before, started = _torch_state(), time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the commands' (variants --json)
            _load_one(pm, ep, info, variants, stage, staged)
    except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, sys.exit() included
        if _is_users_interrupt(exc, ctrl_c):
            raise
        info.status, info.error = "failed", _describe_failure(exc, stage[0])
        info.variants = []
        rejected.update({name: (variant, info.error) for name, variant in staged.items()})
        if strict:
            raise _strict_failure(info) from exc
    finally:
        changed = _restore_torch_state(before)
        info.load_seconds = round(time.perf_counter() - started, 3)
    if changed:
        info.warnings.append(f"changed global torch state while loading ({'; '.join(changed)}); it was put back")
        if strict and info.status == "loaded":
            info.status, info.error = "failed", info.warnings[-1]
            raise _strict_failure(info)


def _strict_failure(info: PluginInfo) -> PluginError:
    return PluginError(
        f"plugin {info.name!r} ({info.distribution} {info.version}) failed: {info.error}. "
        "Strict plugin mode is on (--strict-plugins or ATTNZOO_STRICT_PLUGINS=1)."
    )


def _print_notices(registry: Registry) -> None:
    for p in registry.plugins:
        who = f"plugin {p.name!r} ({p.distribution} {p.version})"
        if p.status == "failed":
            print(f"attnzoo: warning: {who} failed and was skipped: {p.error}. Other variants work; "
                  f"`ATTNZOO_DISABLE_PLUGINS={p.name}` silences this.", file=sys.stderr)
        for warning in p.warnings if p.status != "failed" else ():
            print(f"attnzoo: warning: {who} {warning}. A plugin should leave global state alone; "
                  f"`ATTNZOO_DISABLE_PLUGINS={p.name}` skips it.", file=sys.stderr)
        if p.load_seconds is not None and p.load_seconds > SLOW_LOAD_SECONDS:
            print(f"attnzoo: notice: {who} took {p.load_seconds:.1f} s to load, which every attnzoo command "
                  f"waits for; `ATTNZOO_DISABLE_PLUGINS={p.name}` skips it.", file=sys.stderr)


# --------------------------------------------------------------------------- what a plugin may not take down


@contextlib.contextmanager
def _watch_for_ctrl_c():
    """Yields a list that gets an entry when the user presses Ctrl-C (SIGINT arrives), so that
    a KeyboardInterrupt the user caused stops the program while one a plugin raises itself
    only fails that plugin. Yields None where that cannot be told: outside the main thread
    (no signal handler can be set there) or when SIGINT is ignored or not Python's to handle."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield None
        return
    pressed: list[int] = []

    def on_sigint(signum, frame):
        pressed.append(signum)
        previous(signum, frame)  # Python's default raises KeyboardInterrupt, as it would have

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _is_users_interrupt(exc: BaseException, ctrl_c: list | None) -> bool:
    """A KeyboardInterrupt is the user's when Ctrl-C was pressed, or when we cannot tell. Whatever
    a Ctrl-C's handler raised is the user's too, and so is Stopped: the command line's SIGINT and
    SIGTERM handlers raise it while a training command loads its plugins."""
    if isinstance(exc, Stopped) or bool(ctrl_c):
        return True
    return isinstance(exc, KeyboardInterrupt) and ctrl_c is None


def _describe_failure(exc: BaseException, stage: str) -> str:
    """The error a failed plugin gets. Exceptions read as usual; the BaseExceptions that would
    otherwise end the program say what the plugin did, and where."""
    if isinstance(exc, Exception):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SystemExit):
        return f"SystemExit: it called sys.exit({exc.code!r}) {stage}, which would end every attnzoo command"
    if isinstance(exc, KeyboardInterrupt):
        return f"KeyboardInterrupt: its own code raised it {stage} (no Ctrl-C was pressed)"
    return f"{type(exc).__name__}: {exc} (raised {stage}; a BaseException, which would end every attnzoo command)"


def _torch_settings() -> dict[str, tuple[Any, Any]]:
    """(get, set) of each piece of global torch state a plugin could flip at import, cheap to
    read. The CUDA random state is read only where CUDA is already initialised (reading it
    would initialise CUDA, which takes seconds and a GPU)."""
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    settings = {
        "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
        "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
        "CPU random state": (torch.random.get_rng_state, torch.random.set_rng_state),
        "deterministic algorithms": (_deterministic_algorithms, _use_deterministic_algorithms),
        "float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
        "anomaly detection": (torch.is_anomaly_enabled, torch.autograd.set_detect_anomaly),
        "number of threads": (torch.get_num_threads, torch.set_num_threads),
        "cudnn.enabled": (lambda: cudnn.enabled, lambda value: setattr(cudnn, "enabled", value)),
        "cudnn.benchmark": (lambda: cudnn.benchmark, lambda value: setattr(cudnn, "benchmark", value)),
        "cudnn.deterministic": (lambda: cudnn.deterministic, lambda value: setattr(cudnn, "deterministic", value)),
        "cudnn.allow_tf32": (lambda: cudnn.allow_tf32, lambda value: setattr(cudnn, "allow_tf32", value)),
        "cuda.matmul.allow_tf32": (lambda: cuda.matmul.allow_tf32,
                                   lambda value: setattr(cuda.matmul, "allow_tf32", value)),
        "flash attention": (cuda.flash_sdp_enabled, cuda.enable_flash_sdp),
        "memory-efficient attention": (cuda.mem_efficient_sdp_enabled, cuda.enable_mem_efficient_sdp),
        "math attention": (cuda.math_sdp_enabled, cuda.enable_math_sdp),
    }
    if hasattr(torch, "get_default_device"):  # torch >= 2.3
        settings["default device"] = (torch.get_default_device, torch.set_default_device)
    if torch.cuda.is_initialized():
        settings["CUDA random state"] = (torch.cuda.get_rng_state_all, torch.cuda.set_rng_state_all)
    return settings


def _deterministic_algorithms() -> str:
    if not torch.are_deterministic_algorithms_enabled():
        return "off"
    return "warn only" if torch.is_deterministic_algorithms_warn_only_enabled() else "on"


def _use_deterministic_algorithms(mode: str) -> None:
    torch.use_deterministic_algorithms(mode != "off", warn_only=mode == "warn only")


def _torch_state() -> dict[str, Any]:
    return {name: get() for name, (get, _) in _torch_settings().items()}


def _restore_torch_state(before: dict[str, Any]) -> list[str]:
    """Put back every setting that differs from `before`; returns what had changed, as
    "name: old -> new" (random states: "name changed")."""
    changed, settings = [], _torch_settings()
    for name, old in before.items():
        get, set_ = settings[name]
        new = get()
        if _same(old, new):
            continue
        set_(old)
        changed.append(f"{name} changed" if "random" in name else f"{name}: {old} -> {new}")
    return changed


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, list):  # one random state per CUDA device
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new))
    if isinstance(old, torch.Tensor):
        return isinstance(new, torch.Tensor) and torch.equal(old, new)
    return old == new


# Words a recipe gives a meaning of their own where a variant name goes: `variants: all` (attnzoo.study.plan).
RESERVED_VARIANT_NAMES = ("all",)


def _load_one(pm: pluggy.PluginManager, ep, info: PluginInfo, variants: dict[str, Variant],
              stage: list[str], staged: dict[str, Variant]) -> None:
    """Import the plugin, call its hook and check what it registered. `stage` says how far it
    got, and `staged` holds what it registered, for the error and the kit when it fails."""
    module = ep.load()
    stage[0] = "in its register_attention_variants hook"
    pm.register(module, name=ep.name)
    try:
        pm.check_pending()  # a misspelled @hookimpl is an error, not a silent no-op
    except pluggy.PluginValidationError:
        pm.unregister(module)
        raise

    def register(name, description, factory, options=(), *, fast_path=None, has_parameters=None):
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"variant name {name!r} must be a Python identifier, e.g. 'sigmoid'")
        if name in RESERVED_VARIANT_NAMES:
            raise PluginError(
                f"variant name {name!r} of plugin {info.name!r} is reserved: a study's "
                f"`variants: {name}` means every installed variant, so no variant can be chosen by it. "
                "Register the variant under another name"
            )
        taken = variants.get(name) or staged.get(name)
        if taken is not None:
            raise PluginError(
                f"variant {name!r} is registered twice: by plugin {taken.plugin!r} ({taken.distribution}) "
                f"and by plugin {info.name!r} ({info.distribution}); the first one is kept"
            )
        staged[name] = Variant(
            name, description, factory, tuple(options), fast_path, has_parameters,
            plugin=info.name, distribution=info.distribution, version=info.version,
        )

    for impl in pm.hook.register_attention_variants.get_hookimpls():
        if impl.plugin_name == ep.name:
            impl.function(register=register)
    if not staged:
        raise PluginError(f"plugin {ep.name!r} registered no variants (is the hook named register_attention_variants?)")
    stage[0] = "in the load-time check of its variants"
    with torch.random.fork_rng(devices=[]):  # loading plugins leaves the caller's random stream alone
        checked = {name: _check_at_registration(variant) for name, variant in staged.items()}
    variants.update(checked)
    info.variants = sorted(checked)


@functools.lru_cache(maxsize=None)
def _cached(strict: bool, only: frozenset | None, disable: frozenset) -> Registry:
    return load_registry(strict=strict, only=only and set(only), disable=set(disable))


def default_registry(strict: bool | None = None) -> Registry:
    """The registry of installed plugins, loaded once per process and per setting. `strict`
    (any plugin failure is fatal) left as None comes from ATTNZOO_STRICT_PLUGINS."""
    only = _env_list("ATTNZOO_PLUGINS")
    return _cached(strict_from_env() if strict is None else strict, frozenset(only) if only is not None else None,
                   frozenset(_env_list("ATTNZOO_DISABLE_PLUGINS") or ()))


def installed_or(registry: Registry | None) -> Registry:
    """`registry`, or the installed plugins' when it is None: the one place an omitted
    registry gets its default (recipe validation and the kit, the two doors a name enters by)."""
    return registry if registry is not None else default_registry()


def list_variants() -> list[Variant]:
    return sorted(default_registry().variants.values(), key=lambda v: v.name)


def create_attention(name: str, *, head_dim: int, num_heads: int, **options) -> torch.nn.Module:
    return default_registry().create(name, head_dim=head_dim, num_heads=num_heads, **options)
