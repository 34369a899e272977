"""The runtime every command stands on: atomic writes, options, the folder lock, memory,
the executor (threads or a dask cluster) and progress. Imports calib only (docs/architecture.md).
"""
