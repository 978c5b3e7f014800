"""An in-context episode, and how episodes with different numbers of context images are batched.

An episode is one instance of an in-context task (paper Sec. 3): a *query* in the source domain, *k context images*
that show the target domain on other layouts, the *target* the model should produce, and an optional text *prompt*.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Episode:
    """One in-context task instance. Images are float tensors in [0, 1].

    query:   (3, H, W)     the source-domain view (e.g. an edge map) of the target's layout
    context: (k, 3, H, W)  target-domain examples on other layouts; k may be 0
    target:  (3, H, W)     the ground-truth output
    prompt:  text describing the target domain ("" when there is none)
    task:    the task name, e.g. "edge2img"
    """

    query: torch.Tensor
    context: torch.Tensor
    target: torch.Tensor
    prompt: str
    task: str

    def __post_init__(self) -> None:
        if self.query.ndim != 3 or self.query.shape[0] != 3:
            raise ValueError(f"Episode.query must be (3, H, W), got {tuple(self.query.shape)}.")
        if self.target.shape != self.query.shape:
            raise ValueError(f"Episode.target {tuple(self.target.shape)} must match query {tuple(self.query.shape)}.")
        if self.context.ndim != 4 or self.context.shape[1:] != self.query.shape:
            raise ValueError(f"Episode.context must be (k, {', '.join(map(str, self.query.shape))}), "
                             f"got {tuple(self.context.shape)}.")

    @property
    def k(self) -> int:
        """The number of context images."""
        return self.context.shape[0]


@dataclass(frozen=True)
class EpisodeBatch:
    """A batch of episodes, the context padded to the largest k.

    query:        (B, 3, H, W)
    context:      (B, k_max, 3, H, W), zeros in padded slots
    context_mask: (B, k_max) bool, True where a slot holds a real context image
    target:       (B, 3, H, W)
    prompts, tasks: lists of B strings
    """

    query: torch.Tensor
    context: torch.Tensor
    context_mask: torch.Tensor
    target: torch.Tensor
    prompts: list[str]
    tasks: list[str]

    def __len__(self) -> int:
        return self.query.shape[0]

    def to(self, device: torch.device | str) -> "EpisodeBatch":
        return EpisodeBatch(self.query.to(device), self.context.to(device), self.context_mask.to(device),
                            self.target.to(device), self.prompts, self.tasks)


def collate_episodes(episodes: list[Episode]) -> EpisodeBatch:
    """Stack episodes into an :class:`EpisodeBatch`, padding contexts of different k with zeros and a mask."""
    if not episodes:
        raise ValueError("collate_episodes needs at least one episode.")
    shape = episodes[0].query.shape
    for i, ep in enumerate(episodes):
        if ep.query.shape != shape:
            raise ValueError(f"episode {i} has image shape {tuple(ep.query.shape)}, episode 0 has {tuple(shape)}; "
                             "all episodes in a batch must share one image size.")
    k_max = max(ep.k for ep in episodes)
    context = torch.zeros(len(episodes), k_max, *shape)  # (B, k_max, 3, H, W)
    mask = torch.zeros(len(episodes), k_max, dtype=torch.bool)  # (B, k_max)
    for i, ep in enumerate(episodes):
        context[i, : ep.k] = ep.context
        mask[i, : ep.k] = True
    return EpisodeBatch(
        query=torch.stack([ep.query for ep in episodes]),  # B x (3, H, W) -> (B, 3, H, W)
        context=context,
        context_mask=mask,
        target=torch.stack([ep.target for ep in episodes]),
        prompts=[ep.prompt for ep in episodes],
        tasks=[ep.task for ep in episodes],
    )
