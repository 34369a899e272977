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


def task_key(stage: str, name: str, key: str) -> str:
    """A dask key that is unique per stage, item and stage key, and readable on a dashboard."""
    return f"{stage}-{name}-{key[:10]}"


def code_key(module_name: str) -> str:
    """A hash of a stage module's source: a changed algorithm re-runs its stage on the next run."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec(module_name)
    with open(spec.origin, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]
