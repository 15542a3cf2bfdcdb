"""Where a run's networks come from at prediction time: the checkpoints (torch), or the ONNX files
export.py wrote beside them, run by onnxruntime. The checkpoint still says what each network is (tasks,
input size, normalisation, crop); the ONNX file replaces only the network. Writing those files (export.py:
export_one) lives here too, beside their reading.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from masktk.checkpoint import CheckpointMeta, load_checkpoint, model_from_checkpoint, read_meta
from masktk.errors import UserError
from masktk.files import atomic_path, write_json_atomic
from masktk.labels import TASKS
from masktk.weights import fingerprint

ONNX_NAME = "model.onnx"  # beside each checkpoint it was exported from; its description beside it (.json)


def onnx_path(ckpt):
    return Path(ckpt).parent / ONNX_NAME


def describe(meta: CheckpointMeta, ckpt):
    """What a user of the ONNX file needs beside it: the input it takes and what its outputs are."""
    return {"checkpoint": Path(ckpt).name, "input": "float32 (N, 3, H, W): RGB / 255, minus mean, over std",
            "img_size": list(meta.img_size), "mean": list(meta.mean), "std": list(meta.std),
            "outputs": "logits of each task in order, concatenated",
            "tasks": {t: TASKS[t] for t in meta.tasks},
            "crop": meta.crop, "face_crop": meta.face_crop, "arch": meta.arch}


class OnnxModel:
    """A network run by onnxruntime, called like the torch model on a normalised (N, 3, H, W) batch."""

    def __init__(self, path, device):
        import onnxruntime as ort
        cuda = torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime's own errors name no fix
            raise UserError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:120]}); export it "
                            "again with python export.py")
        self.input = self.session.get_inputs()[0].name

    def to(self, *args, **kwargs):
        return self  # memory format and device are onnxruntime's business

    def __call__(self, x):
        y = self.session.run(None, {self.input: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(y).to(x.device)


def export_onnx(model, img_size, out, opset=17):
    """A torch network (eval mode, CPU) -> an ONNX file at `out` with a dynamic batch, run back with
    onnxruntime on a batch -> (max |logit difference| against torch, largest |logit|)."""
    batch = torch.randn(3, 3, *img_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(model, (batch[:1],), str(out), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        want = model(batch).numpy()
    got = OnnxModel(out, "cpu")(batch).numpy()
    return float(np.abs(got - want).max()), float(np.abs(want).max())


FINGERPRINT_KEY = "masktk_weights"  # in model.onnx's metadata: the fingerprint of the weights it was exported from


def read_description(path):
    """model.json as export.py writes it: an object naming its checkpoint and its input size."""
    try:
        d = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({type(e).__name__}); export the run again with python export.py")
    size = d.get("img_size") if isinstance(d, dict) else None
    if not isinstance(d, dict) or not isinstance(d.get("checkpoint"), str) or not (
            isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size)):
        raise UserError(f"{path}: not a model description written by export.py (an object with checkpoint and "
                        "img_size); export the run again with python export.py")
    return d


def check_onnx(model, path, ck, ckpt, meta):
    """The ONNX file is the checkpoint's: its input fits the checkpoint's size, and the fingerprint it carries
    is that of the checkpoint's weights (a file exported before fingerprints existed is only size-checked)."""
    fix = f"export it again with python export.py --run_dir {Path(ck).parent} (or use --backend torch)"
    shape = model.session.get_inputs()[0].shape
    if len(shape) != 4 or list(shape[2:]) != list(meta.img_size):
        raise UserError(f"{path} takes input {shape}, {Path(ck).name} was trained at {list(meta.img_size)}: {fix}")
    carried = model.session.get_modelmeta().custom_metadata_map.get(FINGERPRINT_KEY)
    if carried is None:
        print(f"note: {path} was exported before files carried their weights' fingerprint: {fix} to have it "
              "checked", file=sys.stderr)
    elif carried != fingerprint(ckpt["model"]):
        raise UserError(f"{path} was exported from other weights than {ck}: {fix}")


def load_onnx_models(groups, device):
    """{checkpoint path: (OnnxModel, meta)} for every checkpoint of the run, from the files export.py wrote,
    each checked to be its checkpoint's."""
    models = {}
    for ck in (ck for g in groups for ck in g):
        path, described = onnx_path(ck), onnx_path(ck).with_suffix(".json")
        if not path.is_file() or not described.is_file():
            raise UserError(f"{path} not found: export the run first with python export.py --run_dir "
                            f"{Path(ck).parent} (or use --backend torch)")
        if read_description(described)["checkpoint"] != Path(ck).name:
            raise UserError(f"{path} was exported from another checkpoint than {Path(ck).name}: export it again")
        ckpt = load_checkpoint(ck)
        meta, model = read_meta(ckpt, ck), OnnxModel(path, device)
        check_onnx(model, path, ck, ckpt, meta)
        models[ck] = (model, meta)
    return models


def load_torch_models(groups, device):
    """{checkpoint path: (model, meta)}: each checkpoint loaded once, and any that does not load or does
    not fit its architecture fails here, before any image is decoded."""
    return {ck: model_from_checkpoint(ck, device) for g in groups for ck in g}


BACKENDS = {"torch": load_torch_models, "onnx": load_onnx_models}


def load_backend(name, groups, device):
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; valid: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](groups, device)


TOLERANCE = 1e-3  # largest |logit difference| accepted between onnxruntime and torch, relative to logits over 1


def export_one(ckpt, out, opset):
    """One checkpoint -> an ONNX file at `out` (dynamic batch), checked with onnxruntime -> max |diff|."""
    model, meta = model_from_checkpoint(ckpt, "cpu")
    weights = fingerprint(model.state_dict())
    description = describe(meta, ckpt) | {"weights": weights}
    with atomic_path(out) as tmp:
        diff, scale = export_onnx(model, meta.img_size, tmp, opset)
        if not diff <= TOLERANCE * max(1.0, scale):
            raise UserError(f"{ckpt}: onnxruntime disagrees with torch by {diff:.2e} (logits up to {scale:.2g}); "
                            "the file is not kept: try another --opset")
        carry_fingerprint(tmp, weights)
    write_json_atomic(Path(out).with_suffix(".json"), description)
    return diff


def carry_fingerprint(path, weights):
    import onnx
    m = onnx.load(str(path))
    entry = m.metadata_props.add()
    entry.key, entry.value = FINGERPRINT_KEY, weights
    onnx.save(m, str(path))
