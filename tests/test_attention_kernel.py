"""The CPU attention of decode and verification (kernels/attention.py): each query row computed
over exactly its visible keys, so a verification row has the bits of the decode step at its
position. SDPA fails this where the two key spans straddle a 16-key boundary (the first test
shows it does, so the check can fail); the result matches a float64 softmax within fp32 rounding."""
import pytest
import torch
import torch.nn.functional as F

from ssdecode.kernels import attention
from ssdecode.models.layers import attend

pytestmark = pytest.mark.skipif(not attention.is_available(), reason="the attention kernel does not build here")


def causal(t: int, span: int, start: int) -> torch.Tensor:
    """[1, t, span]: row i sees keys [0, start + i]."""
    return torch.arange(span) <= (start + torch.arange(t))[None, :, None]


@pytest.mark.parametrize("h,hkv,d", [(12, 2, 128), (14, 2, 64), (4, 4, 32)])
def test_a_verification_row_is_the_decode_step(h, hkv, d):
    g = torch.Generator().manual_seed(h)
    sdpa_differs = False
    for start in range(100, 140):
        t, span = 3, start + 3
        q = torch.randn(1, t, h, d, generator=g)
        k, v = torch.randn(1, hkv, span, d, generator=g), torch.randn(1, hkv, span, d, generator=g)
        rows = attend(q, k, v, causal(t, span, start), False)
        for i in range(t):
            one = attend(q[:, i:i + 1], k[:, :, :start + i + 1], v[:, :, :start + i + 1], None, False)
            assert torch.equal(one[0, 0], rows[0, i]), (start, i)
        sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=causal(t, span, start)[:, None],
                                              enable_gqa=True)
        alone = F.scaled_dot_product_attention(q[:, :1].transpose(1, 2), k[:, :, :start + 1], v[:, :, :start + 1],
                                               enable_gqa=True)
        sdpa_differs |= not torch.equal(sdpa[:, :, 0], alone[:, :, 0])
    assert sdpa_differs or h == hkv  # what the kernel is for (SDPA's folds differ with GQA only)


def test_matches_a_float64_softmax_under_any_mask():
    g = torch.Generator().manual_seed(0)
    b, t, h, hkv, d, span = 2, 5, 6, 2, 64, 70
    q = torch.randn(b, t, h, d, generator=g)
    k, v = torch.randn(b, hkv, span, d, generator=g), torch.randn(b, hkv, span, d, generator=g)
    mask = torch.rand(b, t, span, generator=g) < 0.6  # a tree's: any keys
    mask[..., 0] = True
    out = attention.attend(q, k, v, mask).view(b, t, h, d)
    kk, vv = (x.double().repeat_interleave(h // hkv, 1) for x in (k, v))
    scores = torch.einsum("bthd,bhsd->bhts", q.double(), kk) / d ** 0.5
    ref = torch.einsum("bhts,bhsd->bthd", scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1), vv)
    assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_threads_and_cache_views_do_not_change_bits():
    """A strided view of the cache (as the model passes) and a copy, 1 or 2 threads: the same bits."""
    g = torch.Generator().manual_seed(1)
    cache = torch.randn(3, 90, 2, 64, generator=g)  # [slots, max_len, Hkv, D]
    k = cache[1:2, :77].transpose(1, 2)
    q = torch.randn(1, 4, 8, 64, generator=g)
    mask = causal(4, 77, 73)
    out = attention.attend(q, k, k, mask)
    assert torch.equal(out, attention.attend(q, k.contiguous(), k.contiguous(), mask))
    torch.set_num_threads(1)
    try:
        assert torch.equal(out, attention.attend(q, k, k, mask))
    finally:
        torch.set_num_threads(2)

