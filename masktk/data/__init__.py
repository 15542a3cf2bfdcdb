"""Data: the label table, photo decoding into the cache, batches, augmentation, splits by person, the
sources a run trains on, public mask datasets and composed datasets.
"""
