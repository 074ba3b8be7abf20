"""Registries for the swappable parts of the model (vision towers, connectors, ...), looked up
by exact name, TinyLLaVA Factory style:

    @register("vision_tower", "clip")
    class VisionTower(nn.Module): ...

    get("vision_tower", "clip")        # the class; an unknown name lists the known ones

Modules register themselves when imported; slime_core.models imports each of them explicitly
(no directory scanning), so importing slime_core.models fills the registry.
"""
_TABLES = {}  # kind -> {name: object}


def register(kind, name):
    """Decorator that files an object under (kind, name); a name may be taken only once."""
    if not isinstance(kind, str) or not isinstance(name, str) or not kind or not name:
        raise TypeError(f"kind and name must be non-empty strings, got {kind!r}, {name!r}")

    def add(obj):
        table = _TABLES.setdefault(kind, {})
        if name in table:
            raise ValueError(f"{kind} {name!r} is already registered (to {table[name]!r})")
        table[name] = obj
        return obj
    return add


def get(kind, name):
    """The object registered under (kind, name), exactly as spelled."""
    if kind not in _TABLES:
        raise ValueError(f"no registry of kind {kind!r}; known kinds: {sorted(_TABLES)}")
    table = _TABLES[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(table)}")
    return table[name]


def names(kind):
    """The names registered under kind, sorted (empty for a kind nobody registered)."""
    return sorted(_TABLES.get(kind, {}))
