"""masktk/data/augment.py: batched augmentation."""
import torch

from masktk.data.augment import BatchTransform


def test_augmentation_is_deterministic_for_a_generator_and_off_when_not_training():
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    t = BatchTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "strong")
    a = t(x, train=True, generator=torch.Generator().manual_seed(1))
    b = t(x, train=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (4, 3, 16, 16)
    plain = t(x)
    assert not torch.allclose(a, plain)  # it did augment
    c = t(x, train=True, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)  # and the generator decides how
    assert torch.allclose(plain, (x.float() - 127.5) / 63.75, atol=1e-6)  # x * scale + shift: float rounding
