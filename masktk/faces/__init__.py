"""Faces: the detectors, box arithmetic, the crop recipe and cutting folders of photos into faces.
"""
