"""SIDReasoner's corpus streams on a hand-made dataset: every stream present, no
validation or test target leaks, templates render, masks cover exactly the answers."""

import json

import numpy as np
import pytest

from s2gr_jax import errors
from s2gr_jax.lm import corpus
from s2gr_jax.lm import sft
from s2gr_jax.lm import sid_vocab
from s2gr_jax.lm import tokenizer as tok_lib

import test_lm  # pylint: disable=g-bad-import-order

# Items 1-6 are ordinary; 90/91 (user 0) and 92/93 (user 1) appear only as validation /
# test targets, so they must never show up in an interaction stream.
SEQUENCES = [[1, 2, 3, 4, 90, 91], [2, 5, 6, 92, 93], [3, 1, 2, 6, 5, 4, 1]]


def item_text():
  text = [None] * 93
  cats = {1: "Lab,Gloves", 2: "Lab,Beakers", 3: "Lab,Gloves", 4: "Lab,Goggles",
          5: "Lab,Beakers", 6: "Lab,Gloves"}
  for i in list(range(1, 7)) + [90, 91, 92, 93]:
    text[i - 1] = {"title": f"Title {i}", "brand": f"Brand {i}", "description":
                   f"About item {i}.", "categories": cats.get(i, "Lab,Secret")}
  return text


def sid_text(item):
  return f"<a_{item % 7}><b_{item // 7}><c_{item}>"


def test_every_stream_is_present_and_no_held_out_target_leaks():
  samples = corpus.alignment_samples(SEQUENCES, item_text(), sid_text, domain="lab")
  assert {s.stream for s in samples} == set(corpus.STREAMS)
  pairs = list(corpus.history_pairs(SEQUENCES))
  # user 0: targets 2, 3, 4; user 1: 5, 6; user 2: 1, 2, 6, 5 (its 4 and 1 are held out)
  assert [(u, t) for u, _, _, t in pairs] == [(0, 2), (0, 3), (0, 4), (1, 5), (1, 6),
                                              (2, 1), (2, 2), (2, 6), (2, 5)]
  assert all(4 not in h for u, _, h, _ in pairs if u == 2)
  held_out = [90, 91, 92, 93]
  for s in samples:
    if s.stream in ("title_to_sid", "sid_to_title", "item_text"):
      continue  # catalogue facts, not interactions
    text = s.user + s.answer
    for item in held_out:
      assert sid_text(item) not in text and f"Title {item}" not in text, (s.stream, text)
  per_stream = {st: sum(s.stream == st for s in samples) for st in corpus.STREAMS}
  assert per_stream["sid_history_to_sid"] == len(pairs)
  assert per_stream["title_to_sid"] == per_stream["item_text"] == 10  # every item once
  reasoning = corpus.reasoning_samples(SEQUENCES, item_text(), sid_text)
  assert len(reasoning) == len(pairs)
  for s in reasoning:
    assert not any(sid_text(i) in s.user + s.answer for i in held_out)
    assert s.answer.startswith(corpus.THINK_OPEN) and corpus.THINK_CLOSE in s.answer


def test_templates_render_and_the_mask_covers_exactly_the_answer():
  tok = tok_lib.Tokenizer(*test_lm.byte_vocab())
  vocab = sid_vocab.SidVocab.add_to(tok, (7, 14, 94))
  samples = corpus.alignment_samples(SEQUENCES, item_text(), sid_text)
  chat = next(s for s in samples if s.stream == "sid_history_to_sid")
  prompt, answer = corpus.render(chat, tok)
  text = tok.decode(prompt)
  assert text.startswith("<bos><start_of_turn>user\n" + corpus.INSTRUCTION)
  assert text.endswith("<end_of_turn>\n<start_of_turn>model\n")
  assert answer[-1] == tok.token_id("<end_of_turn>")
  assert vocab.parse(tok.decode(answer)) is not None  # the SID tokens are whole tokens
  batch = sft.pack([sft.Example(tuple(prompt), tuple(answer))], seq_len=len(prompt)
                   + len(answer))
  learned = batch["targets"][0][batch["loss_mask"][0] > 0]
  np.testing.assert_array_equal(learned, answer)
  plain = next(s for s in samples if s.stream == "item_text")
  p, a = corpus.render(plain, tok)
  assert p == [tok_lib.BOS] and tok.decode(a) == plain.answer
  assert "Categories: Lab > Gloves" in corpus.item_description(item_text(), 1, sid_text)


def test_rationale_reads_the_history_and_the_targets_category():
  text = corpus.rationale(item_text(), [1, 2, 3], 6)
  assert '"Title 3"' in text and "Gloves (2)" in text
  assert "continues the Gloves interest, last seen 1 item(s) ago" in text
  assert "related Goggles" in corpus.rationale(item_text(), [1, 2], 4)


def test_the_categories_rationale_is_shorter_and_ends_on_the_same_category():
  hist = [1, 2, 3, 5, 2]
  long = corpus.rationale(item_text(), hist, 6)
  short = corpus.rationale(item_text(), hist, 6, style="categories")
  assert short == ("Recent: Gloves; Beakers; Beakers. Mostly: Beakers (3), Gloves (2). "
                   "Next: more Gloves, last seen 3 item(s) ago.")
  assert "Title" not in short and len(short) < len(long)
  assert corpus.rationale(item_text(), [1, 2], 4, style="categories").endswith(
      "Next: a related Goggles product.")
  samples = corpus.reasoning_samples(SEQUENCES, item_text(), sid_text, style="categories")
  assert all(s.answer.startswith("<think>\nRecent: ") for s in samples)
  with pytest.raises(ValueError, match="rationale style 'poems'"):
    corpus.rationale(item_text(), hist, 6, style="poems")


def test_mixing_weights_and_user_files(tmp_path):
  samples = corpus.alignment_samples(SEQUENCES, item_text(), sid_text)
  mixed = corpus.mix(samples, {"item_text": 0.0, "sid_history_to_sid": 2.0})
  count = lambda ss, st: sum(s.stream == st for s in ss)
  assert count(mixed, "item_text") == 0
  assert count(mixed, "sid_history_to_sid") == 2 * count(samples, "sid_history_to_sid")
  assert count(mixed, "title_to_sid") == count(samples, "title_to_sid")
  with pytest.raises(ValueError, match="does not have"):
    corpus.mix(samples, {"nope": 1.0})
  with pytest.raises(ValueError, match="unknown corpus streams"):
    corpus.alignment_samples(SEQUENCES, item_text(), sid_text, streams=("sids",))
  stories = tmp_path / "n.jsonl"
  stories.write_text(json.dumps({"text": "A story about <a_1><b_0><c_1>."}) + "\n")
  more = corpus.alignment_samples(SEQUENCES, item_text(), sid_text, narratives=str(stories))
  assert [s.answer for s in more if s.stream == "narrative"] == [
      "A story about <a_1><b_0><c_1>."]
  why = tmp_path / "r.jsonl"
  why.write_text(json.dumps({"user": 0, "position": 1, "text": "Because."}) + "\n")
  first = corpus.reasoning_samples(SEQUENCES, item_text(), sid_text, rationales=str(why))[0]
  assert "Because." in first.answer
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"txt": 1}\n')
  with pytest.raises(errors.DataError, match="'text'"):
    corpus.read_texts(str(bad), "narrative")


def test_category_paths_as_nested_lists_read_as_names():
  """Beauty's item_text.json stores categories as a list of paths."""
  text = [{"title": "Polish", "categories": [["Beauty", "Makeup", "Nails"]]}]
  assert corpus._categories(text, 1) == ["Beauty", "Makeup", "Nails"]  # pylint: disable=protected-access
  assert "Categories: Beauty > Makeup > Nails." in corpus.item_description(
      text, 1, lambda i: "<a_0>")
