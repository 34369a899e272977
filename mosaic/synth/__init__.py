"""Synthetic Jezero scenes with ground truth: terrain, ray casting, scenes and their files.

``terrain`` holds the DEM and albedo in the SITE frame, ``raycast`` intersects camera rays with
it, ``scenes`` names the pans, ``writer`` writes frames, records and truth, ``cli`` is the
``mosaic synth`` command.
"""
