"""Workdir paths through `etils.epath`, so `gs://bucket/run` stays a bucket path end to end.

`pathlib.Path("gs://b/r")` is the local path `gs:/b/r`, and `.absolute()` of an epath URI path
is local too; `workdir_path` keeps a URI as it is and makes only local paths absolute.
"""

from __future__ import annotations

import os

from etils import epath


def is_uri(path: str | os.PathLike) -> bool:
  """True for a path with a scheme, e.g. is_uri("gs://b/r") -> True, is_uri("runs/x") -> False."""
  return "://" in os.fspath(path)


def workdir_path(path: str | os.PathLike) -> epath.Path:
  """An epath.Path: a URI (gs://, s3://) unchanged, a local path made absolute."""
  p = epath.Path(path)
  return p if is_uri(path) else p.absolute()


def replace_text(path: epath.Path, text: str) -> None:
  """Writes `text` to `path` through a sibling temporary file and a rename.

  A reader (another process of the run, or a rerun after a kill) sees the old file or the whole
  new one, never half of it.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)
