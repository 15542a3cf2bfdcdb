"""Reading weight files safely: torch.load with weights_only (never pickled code), the DDP and
torch.compile prefixes stripped, the check that no tensor holds nan or inf, and the weights' fingerprint
(an exported model.onnx carries its checkpoint's, so a copied or stale file is caught)."""
from __future__ import annotations

import torch

from masktk.errors import UserError


def fingerprint(state_dict):
    """sha256 over a state dict's names, dtypes, shapes and values, in name order: the same weights give the
    same fingerprint however the checkpoint around them was saved."""
    import hashlib
    h = hashlib.sha256()
    for name in sorted(state_dict):
        v = state_dict[name]
        h.update(f"{name}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def nonfinite_tensor(module):
    """The name of the first floating tensor (weight, buffer) holding nan or inf, or None."""
    for name, v in module.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            return name
    return None


def clean_state_dict(sd):
    """Strip the 'module.' (DDP) and '_orig_mod.' (torch.compile) prefixes."""
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def safe_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        # a file that is no pickle at all (a text file, a JPEG, a torn copy of an old-format file) also fails
        # as "Weights only load failed", but on an opcode ("Unsupported operand"), not on a global
        garbage = "Unsupported operand" in msg
        if not garbage and ("Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg):
            raise UserError(f"{path}: refused, the file carries pickled code or objects, not only weights "
                            "(loaded with weights_only=True for safety)")
        # an empty file (a copy that failed) raises EOFError with no message at all
        detail = ("not a PyTorch file" if garbage else msg.splitlines()[0][:100] if msg.strip()
                  else "the file is empty or cut short")
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {detail}); train it again or "
                        "copy it again")
