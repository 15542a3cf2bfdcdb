"""masktk/models.py: offline ImageNet weights load by order and really classify; mismatches are refused."""
import numpy as np
import pytest
import torch

from masktk.errors import UserError
from masktk.models import OFFLINE_WEIGHTS, create_model, load_pretrained, offline_weights
from masktk.probs import combine_probs, marginal, task_probs
from masktk.weights import clean_state_dict


def _imagenet_top1(model, img):
    from PIL import Image
    x = np.asarray(Image.fromarray(img).resize((224, 224), Image.BICUBIC), np.float32) / 255
    x = (x - np.array(model.pretrained_cfg["mean"])) / np.array(model.pretrained_cfg["std"])
    with torch.no_grad():
        return int(model(torch.tensor(x, dtype=torch.float32).permute(2, 0, 1)[None]).argmax())


@pytest.mark.parametrize("name", sorted(OFFLINE_WEIGHTS))
def test_packaged_weights_classify_imagenet_photos(name):
    import skimage.data
    import timm
    path = offline_weights(name)
    assert path, f"the package of {name}'s weights is not installed (requirements.txt)"
    m = timm.create_model(name, pretrained=False).eval()
    load_pretrained(m, path)
    assert _imagenet_top1(m, skimage.data.chelsea()) == 285  # Egyptian cat
    assert _imagenet_top1(m, skimage.data.coffee()) == 967  # espresso


def test_by_order_loading_refuses_other_shapes(tmp_path):
    import timm
    sd = torch.load(offline_weights("efficientnet_lite0"), weights_only=True)
    k = list(sd)[0]
    sd[k] = torch.zeros(16, 3, 5, 5)
    torch.save(sd, tmp_path / "bad.pth")
    m = timm.create_model("efficientnet_lite0", pretrained=False)
    with pytest.raises(UserError, match="shape"):
        load_pretrained(m, tmp_path / "bad.pth")
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "other.pth")
    with pytest.raises(UserError, match="another architecture"):
        load_pretrained(m, tmp_path / "other.pth")


def test_new_heads_start_near_zero_and_keep_the_backbone():
    m = create_model("efficientnet_lite0", ("mask", "gender", "age"), pretrained=True)
    assert m.get_classifier().out_features == 8
    assert m.get_classifier().weight.abs().max() < 0.1
    sd = torch.load(offline_weights("efficientnet_lite0"), weights_only=True)
    assert torch.equal(m.conv_stem.weight, sd["_conv_stem.weight"])


def test_prefixes_are_stripped():
    assert list(clean_state_dict({"module._orig_mod.a.b": 1, "c": 2})) == ["a.b", "c"]


def test_multi_task_combination_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5, -0.5, 1.0, 0.0, 3.0]])
    p = task_probs(logits, ("mask", "gender", "age"))
    e = np.exp(logits.numpy()[0])
    pm, pg, pa = e[:3] / e[:3].sum(), e[3:5] / e[3:5].sum(), e[5:] / e[5:].sum()
    hand = np.array([pm[c // 6] * pg[(c // 3) % 2] * pa[c % 3] for c in range(18)])
    p18 = combine_probs(p).numpy()[0]
    assert np.allclose(p18, hand, atol=1e-6) and p18.sum() == pytest.approx(1, abs=1e-5)
    for t, ref in (("mask", pm), ("gender", pg), ("age", pa)):  # marginals undo the product
        assert np.allclose(marginal(torch.tensor(p18[None]), t).numpy()[0], ref, atol=1e-6)


def test_precision_rule_follows_compute_capability():
    """bf16 only where the GPU computes it natively (8.0+); fp16 with loss scaling on V100/T4; fp32 on the
    CPU and with amp off. The capability is passed in, so the rule is checked on any machine."""
    from masktk.models import choose_precision
    assert choose_precision("cuda", True, (9, 0)).dtype == torch.bfloat16  # H100/H200
    assert choose_precision("cuda", True, (8, 0)).dtype == torch.bfloat16  # A100
    for cap in ((7, 0), (7, 5)):  # V100, T4: bf16 is emulated there
        p = choose_precision("cuda", True, cap)
        assert p.dtype == torch.float16 and p.needs_scaler
    assert not choose_precision("cuda", True, (9, 0)).needs_scaler
    assert choose_precision("cuda", False, (9, 0)).dtype is None
    assert choose_precision("cpu", True).dtype is None and choose_precision("cpu", True).name == "fp32"
