import json

import pytest
import torch

from ctxdiff_from_scratch.tokenizer import SPECIAL_TOKENS, WordTokenizer, split_words

PROMPTS = ["A red circle on a blue background.", "a green square, striped", "a red square on a grey background"]


@pytest.fixture
def tok():
    return WordTokenizer.fit(PROMPTS, max_length=10)


def test_split_lowercases_and_separates_punctuation():
    assert split_words("A Red-circle, striped!") == ["a", "red", "-", "circle", ",", "striped", "!"]


def test_special_tokens_come_first(tok):
    assert tok.vocab[:4] == list(SPECIAL_TOKENS)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)


def test_round_trip_of_known_words(tok):
    batch = tok(PROMPTS[0])
    assert tok.decode(batch["input_ids"][0]) == " ".join(split_words(PROMPTS[0]))


def test_unknown_words_map_to_unk(tok):
    ids = tok.encode("a purple hexagon")
    assert ids == [tok.bos_id, tok.token_to_id["a"], tok.unk_id, tok.unk_id, tok.eos_id]
    assert tok.decode(ids) == "a <unk> <unk>"


def test_padding_and_attention_mask(tok):
    batch = tok(["a red circle", "a green square , striped"])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 10)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.bool
    # <bos> a red circle <eos> = 5 real tokens, the rest is padding
    assert batch["attention_mask"][0].tolist() == [True] * 5 + [False] * 5
    assert batch["input_ids"][0, 5:].eq(tok.pad_id).all()
    assert batch["attention_mask"][1].sum() == 7


def test_truncation_keeps_bos_and_eos(tok):
    ids = tok(" ".join(["red"] * 50))["input_ids"][0]
    assert ids.shape == (10,)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids[1:-1].eq(tok.token_to_id["red"]).all()


def test_empty_prompt_is_bos_eos(tok):
    assert tok.encode("") == [tok.bos_id, tok.eos_id]


def test_fit_is_deterministic_and_frequency_ordered(tok):
    again = WordTokenizer.fit(list(reversed(PROMPTS)), max_length=10)
    assert again.vocab == tok.vocab
    assert tok.vocab[4] == "a"  # the most frequent word gets the first free id


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = WordTokenizer.load(tmp_path)  # a folder means folder/tokenizer.json
    assert loaded.vocab == tok.vocab and loaded.max_length == tok.max_length
    assert torch.equal(loaded(PROMPTS)["input_ids"], tok(PROMPTS)["input_ids"])
    assert json.loads(path.read_text())["max_length"] == 10


def test_clear_errors():
    with pytest.raises(ValueError, match="max_length"):
        WordTokenizer.fit(PROMPTS, max_length=2)
    with pytest.raises(ValueError, match="special tokens"):
        WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="no words"):
        WordTokenizer.fit(["", "  "])
    with pytest.raises(TypeError, match="must be a str"):
        WordTokenizer.fit(PROMPTS)([3])
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        WordTokenizer.load("/nonexistent/folder")
