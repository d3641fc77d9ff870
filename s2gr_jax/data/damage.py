r"""Damaged copies of a prepared dataset, and what the real entry point says about each.

  python -m s2gr_jax.data.damage --data-dir /path/to/data --dataset beauty \
      [--config configs/tiger_beauty.py:tiny] [--out /tmp/damaged] [--case NAME ...]

Each case copies ``DATA_DIR/DATASET`` into ``OUT/NAME/DATASET``, damages the copy one
way (``CASES``), runs ``python -m s2gr_jax.main --config CONFIG
--config.data.dir=OUT/NAME --config.stages=tokenize`` on it (tokenize only: a case that
loads is not trained) and prints a table of the cases, the exit status and the last
line the run wrote to stderr: for a damaged copy, one line that names the file (and the
line or key), never a traceback. ``tests/test_inputs.py`` runs every case through the
same loader in-process.

The cases are the ways users' files are known to break: binary bytes appended, a
missing ``sequences.txt`` on a machine without internet (the download fallback must
fail in one line), truncation (of a line, of a JSON file), wrong types, duplicates,
out-of-range and inconsistent ids, NaN, and line endings that must still load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from typing import Callable

from s2gr_jax.data import prepared


def _edit_text(path: str, fn: Callable[[str], str]) -> None:
  with open(path, encoding="utf-8") as f:
    text = f.read()
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(fn(text))


def _edit_lines(path: str, fn: Callable[[list[str]], list[str]]) -> None:
  _edit_text(path, lambda t: "\n".join(fn(t.split("\n"))))


def _edit_json(path: str, fn: Callable[[dict], object]) -> None:
  with open(path, encoding="utf-8") as f:
    obj = json.load(f)
  out = fn(obj)
  with open(path, "w", encoding="utf-8") as f:
    f.write(out if isinstance(out, str) else json.dumps(out))


def _replace_token(lines: list[str], lineno: int, index: int, value: str) -> list[str]:
  tokens = lines[lineno - 1].split()
  tokens[index] = value
  lines[lineno - 1] = " ".join(tokens)
  return lines


def _first_key(obj: dict) -> str:
  return sorted(obj, key=int)[0]


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  what: str
  damage: Callable[[str], None]  # folder of the copy → damaged in place
  loads: bool = False            # True: a good file in unusual form, it must load
  needs: str = prepared.SEQUENCES  # the file the case needs in the dataset


def _append_binary(folder: str) -> None:
  with open(os.path.join(folder, prepared.SEQUENCES), "ab") as f:
    f.write(b"\xff\xfe\x00\x13\x8b garbage")


def _truncate_mid_number(folder: str) -> None:
  """Cuts the file inside the third item id of the line at its middle."""
  path = os.path.join(folder, prepared.SEQUENCES)
  with open(path, "rb") as f:
    data = f.read()
  start = data.rfind(b"\n", 0, len(data) // 2) + 1
  line = data[start:data.find(b"\n", start)]
  pos = 0
  for _ in range(3):  # past the user id and two item ids
    pos = line.index(b" ", pos) + 1
  with open(path, "wb") as f:
    f.write(data[:start + pos + 1])


def _truncate_json(name: str) -> Callable[[str], None]:
  def damage(folder: str) -> None:
    path = os.path.join(folder, name)
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:len(data) // 2])
  return damage


def _seq(fn: Callable[[list[str]], list[str]]) -> Callable[[str], None]:
  return lambda folder: _edit_lines(os.path.join(folder, prepared.SEQUENCES), fn)


def _json(name: str, fn: Callable[[dict], object]) -> Callable[[str], None]:
  return lambda folder: _edit_json(os.path.join(folder, name), fn)


def _repeat_line_50(lines: list[str]) -> list[str]:
  """Line 50 appended as the last line (before the file's final newline, if any)."""
  if lines and not lines[-1]:
    return lines[:-1] + [lines[49], ""]
  return lines + [lines[49]]


def _drop_key(obj: dict) -> dict:
  obj.pop(str(len(obj) // 2), None)
  return obj


def _set_first(value) -> Callable[[dict], dict]:
  def fn(obj: dict) -> dict:
    obj[_first_key(obj)] = value
    return obj
  return fn


def _nan_title(obj: dict) -> str:
  key = _first_key(obj)
  record = obj[key] if isinstance(obj[key], dict) else {}
  record["title"] = "@@NAN@@"
  obj[key] = record
  return json.dumps(obj).replace('"@@NAN@@"', "NaN")


CASES: tuple[Case, ...] = (
    Case("binary_appended", "a few bytes of binary garbage appended to sequences.txt",
         _append_binary),
    Case("sequences_missing", "sequences.txt deleted, on a machine without internet "
         "(the raw-file download fallback fails)",
         lambda folder: os.remove(os.path.join(folder, prepared.SEQUENCES))),
    Case("sequences_empty", "sequences.txt empty",
         lambda folder: open(os.path.join(folder, prepared.SEQUENCES), "w").close()),
    # A cut that leaves whole ids is a shorter valid file: it loads, with warnings that
    # the last line has no newline and that catalogue items appear in no sequence.
    Case("sequences_truncated", "sequences.txt cut in the middle of an id (loads, warns)",
         _truncate_mid_number, loads=True),
    Case("item_not_integer", "an item id of line 100 is '12x'",
         _seq(lambda lines: _replace_token(lines, 100, 1, "12x"))),
    Case("item_zero", "an item id of line 7 is 0 (the padding id)",
         _seq(lambda lines: _replace_token(lines, 7, 2, "0"))),
    Case("item_out_of_range", "an item id of line 10 is beyond the catalogue",
         _seq(lambda lines: _replace_token(lines, 10, 1, "9999999"))),
    Case("item_too_large", "an item id of line 3 does not fit int32",
         _seq(lambda lines: _replace_token(lines, 3, 1, "99999999999999999999"))),
    Case("user_duplicated", "line 50 repeated at the end (the same user twice)",
         _seq(_repeat_line_50)),
    Case("crlf_line_endings", "sequences.txt with Windows line endings (must load)",
         lambda folder: _edit_text(os.path.join(folder, prepared.SEQUENCES),
                                   lambda t: t.replace("\n", "\r\n")), loads=True),
    Case("attributes_truncated", "item2attributes.json cut in half",
         _truncate_json(prepared.ATTRIBUTES), needs=prepared.ATTRIBUTES),
    Case("attributes_wrong_type", "an item's attributes are a string, not a list",
         _json(prepared.ATTRIBUTES, _set_first("brand")), needs=prepared.ATTRIBUTES),
    Case("attributes_item_missing", "one item's key removed from item2attributes.json",
         _json(prepared.ATTRIBUTES, _drop_key), needs=prepared.ATTRIBUTES),
    Case("attributes_not_object", "item2attributes.json holds a list",
         _json(prepared.ATTRIBUTES, lambda obj: list(obj.values())),
         needs=prepared.ATTRIBUTES),
    Case("text_truncated", "item_text.json cut in half", _truncate_json(prepared.ITEM_TEXT),
         needs=prepared.ITEM_TEXT),
    Case("text_nan_title", "an item's title is NaN in item_text.json",
         _json(prepared.ITEM_TEXT, _nan_title), needs=prepared.ITEM_TEXT),
    Case("text_wrong_type", "an item's record is a number in item_text.json",
         _json(prepared.ITEM_TEXT, _set_first(42)), needs=prepared.ITEM_TEXT),
    Case("text_duplicate_key", "an item id appears twice in item_text.json",
         lambda folder: _edit_text(os.path.join(folder, prepared.ITEM_TEXT),
                                   lambda t: t.replace("{", '{"1": "dup", ', 1)),
         needs=prepared.ITEM_TEXT),
)


def cases_for(folder: str) -> list[Case]:
  """The cases that apply to a dataset folder (those whose file it has)."""
  return [c for c in CASES if os.path.exists(os.path.join(folder, c.needs))]


def make_copy(source: str, dest_root: str, case: Case) -> str:
  """``dest_root/<case>/<dataset>``: a writable copy of ``source``, damaged by ``case``;
  returns the data folder to pass as ``data.dir`` (its parent)."""
  name = os.path.basename(os.path.normpath(source))
  parent = os.path.join(dest_root, case.name)
  folder = os.path.join(parent, name)
  if os.path.exists(parent):
    shutil.rmtree(parent)
  os.makedirs(folder)
  for fname in (prepared.SEQUENCES,) + prepared.OPTIONAL_FILES:
    if os.path.exists(os.path.join(source, fname)):
      shutil.copyfile(os.path.join(source, fname), os.path.join(folder, fname))
  case.damage(folder)
  return parent


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m s2gr_jax.data.damage",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=os.environ.get("S2GR_DATA_DIR"),
                      help="folder with one sub-folder per dataset (default $S2GR_DATA_DIR)")
  parser.add_argument("--dataset", default="beauty")
  parser.add_argument("--config", default="configs/tiger_beauty.py:tiny")
  parser.add_argument("--out", default=os.path.join("/tmp", "s2gr_damaged"))
  parser.add_argument("--case", action="append", default=None,
                      help="run only these cases (repeat); default all that apply")
  args = parser.parse_args(argv)
  if not args.data_dir:
    parser.error("--data-dir (or $S2GR_DATA_DIR) is required")
  source = os.path.join(args.data_dir, args.dataset)
  cases = [c for c in cases_for(source) if args.case is None or c.name in args.case]
  rows = []
  for case in cases:
    data_dir = make_copy(source, args.out, case)
    cmd = [sys.executable, "-m", "s2gr_jax.main", "--config", args.config,
           "--workdir", os.path.join(args.out, case.name, "run"),
           f"--config.data.dir={data_dir}", "--config.stages=tokenize",
           f"--config.data.tfds_dir={os.path.join(args.out, case.name, 'tfds')}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    if proc.returncode == 0:  # loaded: what it warned about the copy's files
      notes = [l.split(" ", 1)[-1] for l in proc.stdout.splitlines()
               if os.path.join(data_dir, os.path.basename(source)) in l]
      last = "(loaded) " + " / ".join(notes) if notes else "(loaded)"
    traceback = "Traceback (most recent call last)" in proc.stderr
    rows.append((case, proc.returncode, last, traceback))
    print(f"{case.name}: exit {proc.returncode}{' (traceback!)' if traceback else ''}: "
          f"{last}", flush=True)
  print("\n| case | damage | exit | last line on stderr |\n| --- | --- | --- | --- |")
  for case, rc, last, traceback in rows:
    shown = last.replace(args.out, "OUT").replace("|", "\\|")
    print(f"| {case.name} | {case.what} | {rc}{' traceback' if traceback else ''} | "
          f"{shown} |")
  bad = [c.name for c, rc, _, tb in rows if tb or (rc == 0) != c.loads]
  if bad:
    print(f"\nUnexpected outcome: {bad}")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
