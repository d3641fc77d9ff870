"""SIDReasoner's training corpora, built from a dataset's sequences and item text.

Stage 1, SID–language alignment (the streams of the upstream ``data_Qwen3.py``, in
wording of our own): each ``Sample`` is a (system, user, answer) chat turn rendered with
Gemma's chat template, the loss on the answer only, or a plain text (``plain``) whose
every token is learned.

| stream | prompt | answer |
|---|---|---|
| ``sid_history_to_sid`` | the user's SIDs in order | the next SID |
| ``title_to_sid`` / ``sid_to_title`` | an item's title / SID (one each per item) | its SID / title |
| ``sid_history_to_title`` | the user's SIDs | the next item's title |
| ``title_history_to_title`` | the user's titles | the next title |
| ``title_history_to_sid`` | the user's titles | the next SID |
| ``item_text`` (plain) | — | the item's metadata with its SID inline (title, brand, categories, description) |

Upstream also trains on teacher-written narratives (GPT-written item and sequence
stories); those cannot be produced offline, so ``item_text`` is templated from the
metadata instead, and ``narratives=`` takes a user's own JSON-lines file of
``{"text": ...}`` (plain samples) to add them back.

Stage 2, reasoning activation (``reasoning_samples``): the same next-SID prompt asking to
think first, answered ``<think>rationale</think>`` then the SID. The rationale is built
from the data: the titles (``style='titles'``) or only the leaf categories
(``'categories'``, short enough for a small thinking budget) of the recent history, the
history's categories, and which of them the next item's leaf category continues (the
target's category is known for a training example, as upstream's teacher knew the
target); or it comes from a user's file (``rationales=``, JSON lines {"user": ...,
"position": ..., "text": ...}).

**No validation or test target enters either corpus**: histories and targets are taken
from each user's training part only (leave-one-out: all but the last two items), the
same split as every other model of the project (``data/pipeline.py``); item-level
streams describe catalogue items, not interactions.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Callable, Iterable, Sequence

import numpy as np

from s2gr_jax import errors

INSTRUCTION = ("Below is an instruction that describes a task, paired with an input "
               "that provides further context. Write a response that appropriately "
               "completes the request.")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

STREAMS = ("sid_history_to_sid", "title_to_sid", "sid_to_title", "sid_history_to_title",
           "title_history_to_title", "title_history_to_sid", "item_text")
_TITLE_TASKS = (  # a few phrasings of the title-history task (upstream draws among 11)
    "Given the items the user bought, in order, name the item they will buy next.",
    "Predict the title of the next item in this purchase history.",
    "Which product is this customer most likely to buy next?",
    "Recommend the next item for this user; answer with its title.")


@dataclasses.dataclass(frozen=True)
class Sample:
  """One training text: a chat turn (``system``, ``user`` → ``answer``), or with
  ``plain`` a text learned whole (``answer`` only)."""

  stream: str
  answer: str
  user: str = ""
  system: str = ""
  plain: bool = False


def train_part(sequence: Sequence[int]) -> list[int]:
  """The items of a user's sequence that training may see: all but the validation and
  test targets (the last two), as ``pipeline.LeaveOneOut``."""
  return list(sequence[:-2])


def history_pairs(sequences: Iterable[Sequence[int]], max_history: int = 10):
  """(user, position, history, target) for every training target: the target is a
  training-part item at ``position`` ≥ 1, the history the ≤ ``max_history`` before it."""
  for user, seq in enumerate(sequences):
    part = train_part(seq)
    for pos in range(1, len(part)):
      yield user, pos, part[max(0, pos - max_history):pos], part[pos]


def title(item_text, item: int) -> str:
  """The item's title, whitespace collapsed (``item N`` when it has none)."""
  rec = item_text[item - 1] if item_text is not None else None
  name = (rec or {}).get("title") or f"item {item}"
  return " ".join(str(name).split())


def _categories(item_text, item: int) -> list[str]:
  rec = item_text[item - 1] if item_text is not None else None
  cats = (rec or {}).get("categories") or ""
  if isinstance(cats, (list, tuple)):  # a list of names, or of paths (Beauty's)
    if cats and isinstance(cats[0], (list, tuple)):
      cats = cats[0]
    cats = ",".join(map(str, cats))
  return [c.strip() for c in str(cats).split(",") if c.strip()]


def _leaf(item_text, item: int) -> str:
  cats = _categories(item_text, item)
  return cats[-1] if cats else ""


def _quoted(titles: Sequence[str]) -> str:
  return ", ".join(f'"{t}"' for t in titles)


def alignment_samples(sequences: Sequence[Sequence[int]], item_text, sid_text:
                      Callable[[int], str], *, max_history: int = 10,
                      streams: Sequence[str] = STREAMS, domain: str = "",
                      narratives: str | None = None, seed: int = 0) -> list[Sample]:
  """Stage 1's samples of the ``streams`` asked for (module docstring); ``sid_text``
  gives an item's SID string (``SidVocab.text`` of its codes)."""
  unknown = [s for s in streams if s not in STREAMS]
  if unknown:
    raise ValueError(f"unknown corpus streams {unknown}; available: {list(STREAMS)}")
  rng = np.random.default_rng(seed)
  kind = f"{domain} " if domain else ""
  out: list[Sample] = []
  pairs = list(history_pairs(sequences, max_history))
  for _, _, hist, target in pairs:
    sids = ", ".join(sid_text(i) for i in hist)
    titles = _quoted([title(item_text, i) for i in hist])
    if "sid_history_to_sid" in streams:
      system, user = next_sid_messages(sids)
      out.append(Sample("sid_history_to_sid", sid_text(target), system=system, user=user))
    if "sid_history_to_title" in streams:
      out.append(Sample("sid_history_to_title", title(item_text, target), system=(
          f"{INSTRUCTION}\nRecommend the next item from the user's history."),
          user=f"The user interacted with the items {sids}, in this order. What is the "
          "title of the item they will want next?"))
    if "title_history_to_title" in streams:
      task = _TITLE_TASKS[int(rng.integers(len(_TITLE_TASKS)))]
      out.append(Sample("title_history_to_title", f'"{title(item_text, target)}"',
                        system=f"{INSTRUCTION}\n{task}",
                        user=f"The user bought these {kind}items before: {titles}."))
    if "title_history_to_sid" in streams:
      out.append(Sample("title_history_to_sid", sid_text(target), system=(
          f"{INSTRUCTION}\nFrom the titles the user interacted with, predict the "
          "semantic ID of the next item."),
          user=f"The user interacted with these {kind}items, in this order: {titles}. "
          "What is the next item?"))
  items = sorted({i for seq in sequences for i in seq})
  item_system = f"{INSTRUCTION}\nAnswer the question about the item's identity."
  for item in items:
    name = title(item_text, item)
    if "title_to_sid" in streams:
      out.append(Sample("title_to_sid", sid_text(item), system=item_system,
                        user=f"Which item has the title: {name}?"))
    if "sid_to_title" in streams:
      out.append(Sample("sid_to_title", name, system=item_system,
                        user=f"What is the title of the item {sid_text(item)}?"))
    if "item_text" in streams:
      out.append(Sample("item_text", item_description(item_text, item, sid_text),
                        plain=True))
  if narratives:
    out.extend(read_texts(narratives, "narrative"))
  return out


def item_description(item_text, item: int, sid_text: Callable[[int], str]) -> str:
  """An item's metadata as text with its SID inline."""
  rec = (item_text[item - 1] if item_text is not None else None) or {}
  parts = [f'The item {sid_text(item)} is "{title(item_text, item)}"']
  if rec.get("brand"):
    parts[0] += f", by {' '.join(str(rec['brand']).split())}"
  text = parts[0] + "."
  cats = _categories(item_text, item)
  if cats:
    text += f" Categories: {' > '.join(cats)}."
  desc = " ".join(str(rec.get("description") or "").split())
  if desc:
    text += f" {desc[:600]}"
  return text


# How stage 2's rationales are written from the data (``rationale``): 'titles' quotes the
# last items' titles (median 109 Gemma tokens on Scientific), 'categories' names
# only their leaf categories (median 39): a thought that fits a short thinking budget.
RATIONALE_STYLES = ("titles", "categories")


def rationale(item_text, hist: Sequence[int], target: int, recent: int = 3,
              style: str = "titles") -> str:
  """A rationale from the data: the recent items (their titles, or with
  ``style='categories'`` their leaf categories), the history's categories, and how the
  next item's category relates to them. Either style ends on the next item's category."""
  if style not in RATIONALE_STYLES:
    raise ValueError(f"rationale style {style!r}: expected one of {RATIONALE_STYLES}")
  leaves = [_leaf(item_text, i) for i in hist]
  counts = collections.Counter(c for c in leaves if c)
  top = ", ".join(f"{c} ({n})" for c, n in counts.most_common(3))
  want = _leaf(item_text, target)
  last = (max(p for p, c in enumerate(leaves) if c == want)
          if want and want in counts else None)
  if style == "categories":
    lines = ["Recent: " + "; ".join(c or "unknown" for c in leaves[-recent:]) + "."]
    if counts:
      lines.append(f"Mostly: {top}.")
    if last is not None:
      lines.append(f"Next: more {want}, last seen {len(hist) - last} item(s) ago.")
    elif want:
      lines.append(f"Next: a related {want} product.")
    return " ".join(lines)
  recent_titles = _quoted([title(item_text, i) for i in hist[-recent:]])
  lines = [f"The most recent items are {recent_titles}."]
  if counts:
    lines.append(f"The history's categories are mostly {top}.")
  if last is not None:
    lines.append(f"The next item continues the {want} interest, last seen "
                 f"{len(hist) - last} item(s) ago.")
  elif want:
    lines.append(f"The next item is likely a related {want} product.")
  return " ".join(lines)


def reasoning_samples(sequences, item_text, sid_text, *, max_history: int = 10,
                      rationales: str | None = None, style: str = "titles") -> list[Sample]:
  """Stage 2's think-then-SID samples (module docstring)."""
  given = {}
  if rationales:
    for row in _read_jsonl(rationales):
      try:
        given[(int(row["user"]), int(row["position"]))] = str(row["text"])
      except (KeyError, TypeError, ValueError) as e:
        raise errors.DataError(f"{rationales}: each line needs 'user', 'position' and "
                               f"'text' ({e})") from e
  out = []
  for user, pos, hist, target in history_pairs(sequences, max_history):
    sids = ", ".join(sid_text(i) for i in hist)
    why = given.get((user, pos)) or rationale(item_text, hist, target, style=style)
    system, user = reasoning_messages(sids)
    out.append(Sample("reasoning", f"{THINK_OPEN}\n{why}\n{THINK_CLOSE}\n\n"
                      f"{sid_text(target)}", system=system, user=user))
  return out


def next_sid_messages(sids: str) -> tuple[str, str]:
  """(system, user) of the next-SID question over a history of SIDs (``", "``-joined):
  stage 1's ``sid_history_to_sid`` and the non-thinking evaluation."""
  return (f"{INSTRUCTION}\nPredict the next item the user will interact with.",
          f"The user interacted with the items {sids}, in this order. Which item will "
          "they interact with next?")


def reasoning_messages(sids: str) -> tuple[str, str]:
  """(system, user) of the think-then-SID question: stage 2, GRPO and the thinking
  evaluation."""
  return (f"{INSTRUCTION}\nRecommend the next item from the user's history.",
          f"The user interacted with the items {sids}, in this order. Think step by "
          "step about what they will want next, then answer with the item's semantic "
          "ID.")


def mix(samples: Sequence[Sample], weights: dict[str, float], seed: int = 0) -> list[Sample]:
  """Resamples each stream to ``weight`` × its size (weight 0 drops it; unnamed streams
  keep weight 1), shuffled."""
  rng = np.random.default_rng(seed)
  by = collections.defaultdict(list)
  for s in samples:
    by[s.stream].append(s)
  bad = [k for k in weights if k not in by]
  if bad:
    raise ValueError(f"mixing weights name streams the corpus does not have: {bad}; it "
                     f"has {sorted(by)}")
  out = []
  for stream, group in by.items():
    w = float(weights.get(stream, 1.0))
    if w < 0:
      raise ValueError(f"mixing weight of {stream!r} is negative")
    n = int(round(w * len(group)))
    idx = np.concatenate([rng.permutation(len(group)) for _ in range(-(-n // len(group)))]
                         ) if n else np.zeros(0, int)
    out.extend(group[i] for i in idx[:n])
  return [out[i] for i in rng.permutation(len(out))]


EMPTY_THINK = f"{THINK_OPEN}\n{THINK_CLOSE}\n\n"  # the non-thinking answer's start


def render(sample: Sample, tok, empty_think: bool = False) -> tuple[list[int], list[int]]:
  """(prompt ids, answer ids) with Gemma's chat template; a plain sample is all answer
  (after ``<bos>``). The turn's end is part of the answer (the model learns to stop).
  With ``empty_think`` a chat answer that does not think starts after an empty think
  block, which is part of the prompt (Qwen3's non-thinking mode, as upstream trains
  stage 1; the non-thinking evaluation prompts the same way)."""
  from s2gr_jax.lm import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  if sample.plain:
    return [tok_lib.BOS], tok.encode(sample.answer)
  prompt = tok.chat_prompt(sample.user, sample.system or None)
  if empty_think and not sample.answer.startswith(THINK_OPEN):
    prompt += EMPTY_THINK
  return (tok.encode(prompt, add_bos=True),
          tok.encode(sample.answer + tok_lib.END_OF_TURN))


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"{path}: no such file")
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise errors.DataError(f"{path}:{n}: not JSON ({e})") from e
  return rows


def read_texts(path: str, stream: str) -> list[Sample]:
  out = []
  for n, row in enumerate(_read_jsonl(path), 1):
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
      raise errors.DataError(f"{path}: line {n} needs a 'text' string")
    out.append(Sample(stream, row["text"], plain=True))
  return out
