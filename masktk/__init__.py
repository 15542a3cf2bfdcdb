"""masktk: the face-mask toolkit's library. The scripts at the repository's root run it; `from masktk import
Predictor` is the Python entry (Predictor.from_run(run_dir).predict(photo) -> one dict per face).
"""
__all__ = ["Predictor"]


def __getattr__(name):  # loaded on first use: `import masktk.labels` stays free of torch
    if name == "Predictor":
        from masktk.predict.predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'masktk' has no attribute {name!r}")
