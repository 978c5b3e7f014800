"""Episode validation and batching of episodes with different k."""
import pytest
import torch

from ctxdiff_from_scratch.data.episode import Episode, collate_episodes


def make_episode(k: int, fill: float = 0.5, size: int = 8) -> Episode:
    return Episode(query=torch.full((3, size, size), fill), context=torch.full((k, 3, size, size), fill + 0.1),
                   target=torch.full((3, size, size), fill + 0.2), prompt=f"k={k}", task="edge2img")


def test_collate_pads_mixed_k_with_zeros_and_mask():
    batch = collate_episodes([make_episode(0), make_episode(2), make_episode(1)])
    assert batch.context.shape == (3, 2, 3, 8, 8)
    assert batch.context_mask.tolist() == [[False, False], [True, True], [True, False]]
    assert torch.all(batch.context[0] == 0) and torch.all(batch.context[2, 1] == 0)
    assert torch.allclose(batch.context[1], torch.full((2, 3, 8, 8), 0.6))
    assert batch.prompts == ["k=0", "k=2", "k=1"] and len(batch) == 3
    assert batch.query.shape == batch.target.shape == (3, 3, 8, 8)


def test_collate_all_k_zero_gives_empty_context():
    batch = collate_episodes([make_episode(0), make_episode(0)])
    assert batch.context.shape == (2, 0, 3, 8, 8) and batch.context_mask.shape == (2, 0)


def test_collate_rejects_mixed_sizes_and_empty_list():
    with pytest.raises(ValueError, match="image size"):
        collate_episodes([make_episode(1, size=8), make_episode(1, size=16)])
    with pytest.raises(ValueError, match="at least one"):
        collate_episodes([])


@pytest.mark.parametrize("field, bad", [("query", torch.zeros(1, 8, 8)), ("target", torch.zeros(3, 4, 4)),
                                        ("context", torch.zeros(3, 8, 8))])
def test_episode_rejects_bad_shapes(field, bad):
    parts = dict(query=torch.zeros(3, 8, 8), context=torch.zeros(1, 3, 8, 8), target=torch.zeros(3, 8, 8))
    parts[field] = bad
    with pytest.raises(ValueError, match=field):
        Episode(prompt="", task="t", **parts)
