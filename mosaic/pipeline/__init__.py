"""The registration pipeline: the input checks before any work (preflight), the stages (ingest,
features, pairs, matches, adjust) and what they hand down (registration) (docs/architecture.md).
"""
