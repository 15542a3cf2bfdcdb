"""Metrics: macro F1 of submissions, and detection scores of faces found in photos.
"""
