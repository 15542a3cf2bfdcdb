"""Prediction: the one prediction path (pipeline), backends (torch, ONNX), Predictor, photos, videos,
submissions and person pooling.
"""
