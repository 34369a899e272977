"""The files a user receives or a stage keeps, each with its writer and reader, knowing nothing
of the pipeline: COG, GeoTIFF georeferencing, Hugin project, STAC item, web tiles and map, the
viewer, solution.json, the workspace and the input pixels (docs/architecture.md).
"""
