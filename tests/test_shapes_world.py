"""ShapesWorld: determinism, episode validity, inferability, split disjointness, maps consistent with layouts."""
import random
import re

import numpy as np
import pytest
import torch

from ctxdiff_from_scratch.data.edges import QUERY_CANNY, canny
from ctxdiff_from_scratch.data.episode import collate_episodes
from ctxdiff_from_scratch.data.shapes import (COLOURS, FORWARD_TASKS,
                                              HELD_OUT_CLASS_COLOURS, HELD_OUT_COLOUR_TEXTURES, MAP_PROMPTS,
                                              OUT_OF_DOMAIN_TASKS, REVERSE_TASKS, SEG_COLOURS, SHAPE_CLASSES, TASKS,
                                              TEXTURES, Layout, Shape, ShapesWorld, Style)
from ctxdiff_from_scratch.data.shapes_layout import SHAPE_PLURALS, depth_levels, rasterize
from ctxdiff_from_scratch.data.shapes_style import binding_twin


@pytest.fixture(scope="module")
def train():
    return ShapesWorld("train")


@pytest.fixture(scope="module")
def test_world():
    return ShapesWorld("test")


def colours_in(image: torch.Tensor) -> set[tuple[float, ...]]:
    """The distinct RGB values of a (3, H, W) image, rounded to 4 decimals."""
    return {tuple(c) for c in np.round(image.reshape(3, -1).T.numpy(), 4).tolist()}


def rgb(colour) -> tuple[float, ...]:
    return tuple(np.round(np.asarray(colour, dtype=np.float32), 4).tolist())


def test_task_lists():
    world = ShapesWorld()
    assert set(world.tasks) == set(FORWARD_TASKS + REVERSE_TASKS + OUT_OF_DOMAIN_TASKS) and len(world.tasks) == 9
    assert world.train_tasks == FORWARD_TASKS + REVERSE_TASKS
    assert len(SHAPE_CLASSES) >= 5


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_gives_a_valid_episode(split, task):
    world = ShapesWorld(split, size=64)
    ep = world.episode(3, task, k=3)
    assert ep.task == task and ep.prompt
    assert ep.query.shape == ep.target.shape == (3, 64, 64) and ep.context.shape == (3, 3, 64, 64)
    for x in (ep.query, ep.context, ep.target):
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    # the three views are different pictures (not copies of one another)
    assert not torch.equal(ep.query, ep.target) and not torch.equal(ep.context[0], ep.target)


def test_other_sizes_and_k0(train):
    ep = ShapesWorld("train", size=32).episode(1, "seg2img", k=2)
    assert ep.query.shape == (3, 32, 32) and ep.context.shape == (2, 3, 32, 32)
    empty = train.episode(1, "edge2img", k=0)
    assert empty.context.shape == (0, 3, 64, 64) and empty.k == 0


@pytest.mark.parametrize("task", ["edge2img", "img2depth", "sketch2img", "canny2img"])
def test_deterministic_in_seed_and_different_across_seeds(task):
    a, b = ShapesWorld("train").episode(7, task, 3), ShapesWorld("train").episode(7, task, 3)
    assert torch.equal(a.query, b.query) and torch.equal(a.context, b.context) and torch.equal(a.target, b.target)
    assert a.prompt == b.prompt
    c = ShapesWorld("train").episode(8, task, 3)
    assert not torch.equal(a.target, c.target) and not torch.equal(a.query, c.query)
    # the other split is a different world
    assert not torch.equal(a.target, ShapesWorld("test").episode(7, task, 3).target)


def test_query_target_and_style_do_not_depend_on_k(train):
    episodes = [train.episode(11, "seg2img", k) for k in (0, 1, 3)]
    for ep in episodes[1:]:
        assert torch.equal(ep.query, episodes[0].query) and torch.equal(ep.target, episodes[0].target)
        assert ep.prompt == episodes[0].prompt


def test_task_none_cycles_through_training_tasks(train):
    tasks = [train.episode(seed, None, 1).task for seed in range(12)]
    assert set(tasks) == set(train.train_tasks)
    assert train.episode(5, None, 1).task == train.train_tasks[5 % 6]


@pytest.mark.parametrize("split", ["train", "test"])
def test_context_shows_every_target_class_and_its_colour(split):
    """Inferability: each class of the target is visible in some context image, in the style's own fill colour."""
    world = ShapesWorld(split)
    for seed in range(40):
        task = TASKS[seed % len(TASKS)]
        k = 1 + seed % 3
        spec = world.episode_spec(seed, task, k)
        ep = world.episode(seed, task, k)
        context_classes = set()  # seg colours seen in the context layouts
        for layout in spec.context_layouts:
            context_classes |= colours_in(world.render_maps(layout)["seg"])
        target_classes = {rgb(SEG_COLOURS[c]) for c in spec.target_layout.classes}
        assert target_classes <= context_classes, (split, seed, task)
        if spec.target_kind == "img":  # the colour of each target class can be read from the context pixels
            context_pixels = set().union(*(colours_in(image) for image in ep.context))
            for cls in spec.target_layout.classes:
                assert rgb(COLOURS[spec.style.fill(cls)[0]]) in context_pixels, (split, seed, cls)


def test_train_styles_never_use_held_out_pairings_and_test_styles_always_do(train, test_world):
    train_styles = [train.style(s) for s in range(1500)] + [train.episode_spec(s).style for s in range(300)]
    test_styles = [test_world.style(s) for s in range(300)] + [test_world.episode_spec(s).style for s in range(300)]
    assert all(not style.held_out_pairings() for style in train_styles)
    assert all(style.held_out_pairings() for style in test_styles)
    assert not set(train_styles) & set(test_styles)
    # Train covers every pairing that is not held out (so the held-out ones are the only thing train never sees).
    seen_class_colours = {(cls, colour) for st in train_styles for cls, (colour, _) in zip(SHAPE_CLASSES, st.fills)}
    seen_colour_textures = {fill for st in train_styles for fill in st.fills}
    all_class_colours = {(cls, colour) for cls in SHAPE_CLASSES for colour in COLOURS}
    all_colour_textures = {(colour, texture) for colour in COLOURS for texture in TEXTURES}
    assert seen_class_colours == all_class_colours - HELD_OUT_CLASS_COLOURS
    assert seen_colour_textures == all_colour_textures - HELD_OUT_COLOUR_TEXTURES


def test_test_targets_show_a_held_out_pairing(test_world):
    for seed in range(60):
        spec = test_world.episode_spec(seed, TASKS[seed % len(TASKS)], 2)
        assert set(spec.style.held_out_classes()) & set(spec.target_layout.classes), seed
        _, prompt = test_world.styled_image(seed)
        style = test_world.style(seed)
        assert any(SHAPE_PLURALS[cls] in prompt for cls in style.held_out_classes())


def test_layout_seeds_are_disjoint_between_splits(train, test_world):
    seeds = {}
    for world in (train, test_world):
        specs = [world.episode_spec(s, TASKS[s % len(TASKS)], 3) for s in range(150)]
        seeds[world.split] = {layout.seed for sp in specs for layout in (sp.target_layout, *sp.context_layouts)}
    assert all(s % 2 == 0 for s in seeds["train"]) and all(s % 2 == 1 for s in seeds["test"])
    assert len(seeds["train"]) == len(seeds["test"]) == 150 * 4  # and no layout is reused within a split
    with pytest.raises(ValueError, match="other split"):
        train.layout(next(iter(seeds["test"])))
    assert train.layout(4) == train.layout(4)


def test_maps_are_exactly_consistent_with_the_layout(train):
    for seed in range(0, 120, 2):
        layout = train.layout(seed)
        maps = train.render_maps(layout)
        seg, depth, edge = maps["seg"], maps["depth"][0], maps["edge"][0] > 0
        # seg pixels of class c exist iff c is in the layout; nothing else is coloured
        seg_colours = colours_in(seg)
        for cls in SHAPE_CLASSES:
            assert (rgb(SEG_COLOURS[cls]) in seg_colours) == (cls in layout.classes), (seed, cls)
        assert seg_colours <= {rgb(SEG_COLOURS[c]) for c in layout.classes} | {(0.0, 0.0, 0.0)}
        # depth: shape i (back to front) is visible at level i, and levels rise towards the front
        ids = torch.from_numpy(rasterize(layout, 64).ids.astype(np.int64))
        levels = depth_levels(len(layout.shapes))
        assert np.all(np.diff(levels) > 0)
        for i in range(len(layout.shapes)):
            assert (ids == i).any() and torch.all(depth[ids == i] == float(levels[i + 1]))
        # edges are thin and lie on region boundaries: each edge pixel is on the front side of a boundary (a
        # 4-neighbour is further back, i.e. darker in depth), and every boundary has an edge pixel on one side
        padded = torch.nn.functional.pad(depth[None, None], (1, 1, 1, 1), value=-1.0)[0, 0]  # (H, W) -> (H+2, W+2)
        neighbours = torch.stack([padded[1:-1, :-2], padded[1:-1, 2:], padded[:-2, 1:-1], padded[2:, 1:-1]])
        behind = ((neighbours < depth) & (neighbours >= 0)).any(dim=0)  # (4, H, W) -> (H, W); image border ignored
        assert edge.any() and torch.equal(edge, behind)
        right, down = depth[:, 1:] != depth[:, :-1], depth[1:, :] != depth[:-1, :]
        assert torch.all(edge[:, 1:][right] | edge[:, :-1][right]) and torch.all(edge[1:, :][down] | edge[:-1, :][down])


def test_styled_image_and_maps_agree_on_shape_positions(train):
    """Where the styled image differs from its bare background is exactly where the seg map is not black."""
    for seed in range(20):
        spec = train.episode_spec(seed, "edge2img", 0)
        image = train.render(spec.target_layout, spec.style)
        background = train.render(Layout(()), spec.style)
        shapes_in_image = (image != background).any(dim=0)
        shapes_in_seg = train.render_maps(spec.target_layout)["seg"].sum(dim=0) > 0
        assert torch.equal(shapes_in_image, shapes_in_seg), seed


@pytest.mark.parametrize("task", TASKS)
def test_episode_views_are_the_layouts_maps_and_images(train, task):
    """Query and target of an episode are the target layout's views, the context the context layouts' views."""
    spec = train.episode_spec(5, task, 2)
    ep = train.episode(5, task, 2)
    views = train.render_maps(spec.target_layout, spec.style)
    assert torch.equal(ep.query, views[spec.source]) and torch.equal(ep.target, views[spec.target_kind])
    for image, layout in zip(ep.context, spec.context_layouts):
        assert torch.equal(image, train.render_maps(layout, spec.style)[spec.target_kind])


def test_out_of_domain_queries(train):
    for seed in range(10):
        layout = train.layout(2 * seed)
        maps = train.render_maps(layout)
        edge, scribble = maps["edge"][0] > 0, maps["scribble"][0] > 0
        sketch_ink = maps["sketch"][0] < 0.5
        # scribbles and sketches follow the outlines: (almost) all ink within 3 px of a true edge pixel
        near_edge = torch.nn.functional.max_pool2d(edge[None, None].float(), 7, 1, 3)[0, 0] > 0
        assert scribble[near_edge].sum() >= 0.98 * scribble.sum()
        assert sketch_ink[near_edge].sum() >= 0.98 * sketch_ink.sum()
        # thick strokes vs thin, partly missing ones; neither is the exact edge map
        assert scribble.sum() > 1.5 * edge.sum() and 0.3 * edge.sum() < sketch_ink.sum() < scribble.sum()
        assert not torch.equal(scribble, edge) and maps["sketch"][0].max() == 1.0  # white paper
    # canny2img's query is the Canny map of the styled target
    ep = train.episode(4, "canny2img", 1)
    expected = canny(ep.target.permute(1, 2, 0).numpy(), **QUERY_CANNY)
    assert torch.equal(ep.query[0] > 0, torch.from_numpy(expected)) and expected.any()


def test_prompts_describe_the_style_or_name_the_map(train):
    style = Style(background="checker", background_colour="yellow", background_angle=0,
                  fills=(("red", "flat"), ("teal", "dots"), ("green", "flat"), ("blue", "flat"), ("pink", "flat"),
                         ("grey", "stripes")), outline="none")
    expected = "red circles and teal squares with dots on a yellow checkered background"
    assert style.describe(["square", "circle"]) == expected
    orange = Style("solid", "orange", 0, style.fills, outline="black")
    assert orange.describe(["star"]) == "blue stars on a plain orange background, outlined in black"
    assert Style("gradient", "orange", 0, style.fills, "white").describe(["cross"]).endswith(
        "grey crosses with stripes on an orange gradient background, outlined in white")
    for seed in range(30):
        task = TASKS[seed % len(TASKS)]
        spec = train.episode_spec(seed, task, 1)
        if spec.target_kind == "img":
            for cls in spec.target_layout.classes:
                colour, texture = spec.style.fill(cls)
                assert f"{colour} {SHAPE_PLURALS[cls]}" in spec.prompt
            assert f" {spec.style.background_colour} " in spec.prompt.split(" on a")[1]
            absent = set(SHAPE_CLASSES) - set(spec.target_layout.classes)
            assert not any(f" {SHAPE_PLURALS[c]}" in f" {spec.prompt}" for c in absent)
        else:
            assert spec.prompt == MAP_PROMPTS[spec.target_kind]
    image, prompt = train.styled_image(3)
    assert image.shape == (3, 64, 64) and " background" in prompt and torch.equal(image, train.styled_image(3)[0])
    sample, style, classes = train.styled_sample(3)
    assert torch.equal(sample, image) and style.describe(classes) == prompt and style == train.style(3)


def _words(prompt: str) -> list[str]:
    """The prompt's words in sorted order, without punctuation and articles ("a orange" is written "an orange")."""
    return sorted(word for word in re.findall(r"[a-z]+", prompt) if word not in ("a", "an"))


def test_binding_twin_rebinds_the_same_words_within_the_split_rules(train, test_world):
    style = Style("checker", "yellow", 0, (("purple", "flat"), ("teal", "dots"), ("brown", "flat"),
                                           ("orange", "flat"), ("pink", "flat"), ("grey", "stripes")), "none")
    prompt = style.describe(["circle", "square"])
    seen = set()
    for seed in range(40):
        twin = binding_twin(style, ["circle", "square"], random.Random(seed), "train")
        words = twin.describe(["circle", "square"])
        assert words != prompt and _words(words) == _words(prompt)  # same words, other binding
        assert twin.fills[2:] == style.fills[2:] and not twin.held_out_pairings()
        seen.add(words)
    # the three candidates: circle <-> square fills, circle <-> background, square <-> background colours
    assert seen == {"teal circles with dots and purple squares on a yellow checkered background",
                    "yellow circles and teal squares with dots on a purple checkered background",
                    "purple circles and yellow squares with dots on a teal checkered background"}
    # a swap that would paint a held-out pairing (blue circles) is not a train twin, and then none is left
    blue = Style("solid", "blue", 0, (("red", "flat"),) + style.fills[1:], "none")
    assert binding_twin(blue, ["circle"], random.Random(0), "train") is None
    assert binding_twin(blue, ["circle"], random.Random(0), "test").describe(["circle"]) == \
        "blue circles on a plain red background"
    for world in (train, test_world):
        for seed in range(30):
            images, prompts = world.styled_twins(seed)
            image, prompt = world.styled_image(seed)
            assert images.shape == (2, 3, 64, 64) and torch.equal(images[0], image) and prompts[0] == prompt
            assert _words(prompts[1]) == _words(prompt)
            assert (prompts[1] != prompt) == (not torch.equal(images[1], image))  # no twin: a plain repeat


def test_style_siblings_paint_one_style_on_two_layouts(train, test_world):
    for world in (train, test_world):
        agree_own, agree_other = [], []
        for seed in range(20):
            images, prompt = world.styled_siblings(seed)
            image, own_prompt = world.styled_image(seed)
            assert images.shape == (2, 3, 64, 64) and torch.equal(images[0], image) and prompt == own_prompt
            assert not torch.equal(images[1], images[0])  # another layout
            # the bare background of the style: both siblings show it wherever no shape covers it
            background = world.render(Layout(shapes=()), world.style(seed))
            other = world.render(Layout(shapes=()), world.style(seed + 1000))

            for backdrop, agreement in ((background, agree_own), (other, agree_other)):
                agreement.append((images == backdrop).all(dim=1).float().mean(dim=(1, 2)))  # (2, 3, H, W) -> (2,)
        assert torch.stack(agree_own).min() > 0.5  # shapes cover well under half of an image
        assert torch.stack(agree_other).mean() < 0.2


def test_labelled_siblings_class_maps_label_the_siblings_pixels(train, test_world):
    for world in (train, test_world):
        for seed in range(10):
            images, _, classes = world.labelled_siblings(seed)
            assert torch.equal(images, world.styled_siblings(seed)[0])
            assert classes.shape == (2, 64, 64) and classes.min() >= -1 and classes.max() < len(SHAPE_CLASSES)
            backdrop = world.render(Layout(shapes=()), world.style(seed))
            shows_backdrop = (images == backdrop).all(dim=1).numpy()  # (2, 3, H, W) -> (2, H, W)
            on_background = classes == -1
            assert shows_backdrop[on_background].mean() > 0.97  # background pixels show the bare backdrop
            assert shows_backdrop[~on_background].mean() < 0.3  # shape pixels are painted over it
            _, _, shown = world.styled_sample(seed)
            assert set(np.unique(classes[0][classes[0] >= 0])) <= {SHAPE_CLASSES.index(c) for c in shown}


def test_labelled_episode_is_the_episode_with_its_context_class_maps(train, test_world):
    for world in (train, test_world):
        for seed, task in ((3, "seg2img"), (4, "img2edge"), (5, None)):
            episode, classes = world.labelled_episode(seed, task, k=3)
            plain = world.episode(seed, task, k=3)
            assert torch.equal(episode.context, plain.context) and torch.equal(episode.target, plain.target)
            spec = world.episode_spec(seed, task, k=3)
            assert classes.shape == (3, 64, 64)
            for i, layout in enumerate(spec.context_layouts):
                assert np.array_equal(classes[i], rasterize(layout, 64).classes)
    assert train.labelled_episode(1, k=0)[1].shape == (0, 64, 64)


def test_collate_mixed_k(train):
    episodes = [train.episode(s, None, k) for s, k in ((0, 0), (1, 1), (2, 3))]
    batch = collate_episodes(episodes)
    assert batch.context.shape == (3, 3, 3, 64, 64)
    assert batch.context_mask.tolist() == [[False] * 3, [True, False, False], [True] * 3]
    assert torch.all(batch.context[0] == 0) and torch.all(batch.context[1, 1:] == 0)
    assert torch.equal(batch.context[1, 0], episodes[1].context[0])
    assert torch.equal(batch.context[2], episodes[2].context)
    assert batch.tasks == [ep.task for ep in episodes]


def test_bad_inputs_give_clear_errors(train):
    with pytest.raises(ValueError, match="img2edge"):
        train.episode(0, "edges2img")
    with pytest.raises(ValueError, match="'train', 'test'"):
        ShapesWorld("validation")
    with pytest.raises(ValueError, match="k"):
        train.episode(0, "edge2img", k=-1)
    for size in (8, 64.0, "64"):
        with pytest.raises(ValueError, match="size"):
            ShapesWorld("train", size=size)
    with pytest.raises(ValueError, match="seed"):
        train.episode(-1)
    with pytest.raises(ValueError, match="triangle"):
        Shape("hexagon", 0.5, 0.5, 0.2, 0.0)
