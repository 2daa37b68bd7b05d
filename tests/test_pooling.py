from __future__ import annotations

import pytest
import torch

from embedtune.models.pooling import get_pooler, last_token, mean, weighted_mean


def _pad(rows, side, width, dim=3):
    hidden = torch.full((len(rows), width, dim), float("nan"))  # NaN padding must never leak
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        n = r.shape[0]
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        hidden[i, sl] = r
        mask[i, sl] = 1
    return hidden, mask


@pytest.mark.parametrize("pool", [last_token, mean, weighted_mean])
def test_poolers_agree_across_padding_sides(pool):
    torch.manual_seed(0)
    rows = [torch.randn(n, 3) for n in (1, 4, 2)]
    right = pool(*_pad(rows, "right", 5))
    left = pool(*_pad(rows, "left", 5))
    assert torch.isfinite(right).all()
    torch.testing.assert_close(right, left)


def test_pooler_values_by_hand():
    rows = [torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [5.0, 6, 0]])]
    hidden, mask = _pad(rows, "right", 4)
    assert last_token(hidden, mask).tolist() == [[5.0, 6.0, 0.0]]
    assert mean(hidden, mask).tolist() == [[3.0, 2.0, 0.0]]
    # weights 1, 2, 3 -> (1 + 6 + 15) / 6, (18) / 6
    torch.testing.assert_close(weighted_mean(hidden, mask), torch.tensor([[22 / 6, 3.0, 0.0]]))


def test_unknown_pooler_and_empty_row():
    with pytest.raises(ValueError, match="unknown pooling 'cls'"):
        get_pooler("cls")
    with pytest.raises(ValueError, match="no real token"):
        last_token(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))
