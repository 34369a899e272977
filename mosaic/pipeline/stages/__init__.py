"""The registration stages, in order; each module has ``run(ws, config, client) -> dict`` (its report).

ingest -> features -> pairs -> matches -> adjust. A stage reads what the one before wrote into the
workspace and writes its own artefacts; it is skipped when its recorded key (a hash of its inputs
and the options it reads) is unchanged.
"""

ORDER = ("ingest", "features", "pairs", "matches", "adjust")


def upstream_key(ws, stage: str) -> str:
    """The key the named (finished) stage recorded: part of every later stage's key, so that a
    changed input re-runs everything downstream of it."""
    return ws.read_json("stages", f"{stage}.json")["key"]


def code_key(*names: str) -> str:
    """A hash of the source of the named modules, a package's standing for every module under it:
    a changed algorithm anywhere a stage runs re-runs that stage on the next run.

    ``code_key(__name__)`` hashes one stage module; ``code_key("calib", "mosaic.terrain.grid")``
    hashes the whole ``calib`` package and one module. Names are hashed with their files' paths
    relative to the package, so moving code between modules counts as a change too."""
    import hashlib
    import importlib.util
    from pathlib import Path

    h = hashlib.sha256()
    for name in sorted(set(names)):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"code_key: no module named {name!r}")
        files = [Path(spec.origin)]
        if spec.submodule_search_locations:  # a package: every .py file under it
            files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.py"))
        root = Path(spec.origin).parent
        for f in files:
            h.update(f"{name}:{f.relative_to(root) if f.is_relative_to(root) else f.name}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]
