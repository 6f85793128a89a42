"""Workdir paths through `etils.epath`, so `gs://bucket/run` stays a bucket path end to end.

`pathlib.Path("gs://b/r")` is the local path `gs:/b/r`, and `.absolute()` of an epath URI path
is local too; `workdir_path` keeps a URI as it is and makes only local paths absolute. A URI is a
scheme at the very start (`gs://`, `s3://`); a local folder whose name holds `://` further on
(`runs/a://b`) is a local path (on POSIX `a://b` is the folder `a:/b`).
"""

from __future__ import annotations

import os
import re
import uuid

from etils import epath

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str | os.PathLike) -> bool:
  """True for a path that starts with a scheme, e.g. is_uri("gs://b/r") -> True,
  is_uri("runs/x") -> False, is_uri("runs/a://b") -> False."""
  return bool(_SCHEME.match(os.fspath(path)))


def workdir_path(path: str | os.PathLike) -> epath.Path:
  """An epath.Path: a URI (gs://, s3://) unchanged, a local path made absolute (and normalized)."""
  if is_uri(path):
    return epath.Path(path)
  # epath.Path() itself reads any "://" as a scheme; build the local path class directly.
  return type(epath.Path("/"))(os.path.abspath(os.fspath(path)))


def unique_tmp(path: epath.Path) -> epath.Path:
  """A sibling temporary name no other writer uses (pid + random), e.g. `report.json.4242.1f3a.tmp`.

  Two processes writing one file (two eval.py on one workdir) each rename their own temporary:
  the last rename wins and neither fails.
  """
  return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def replace_text(path: epath.Path, text: str) -> None:
  """Writes `text` to `path` through a sibling temporary file and a rename.

  A reader (another process of the run, or a rerun after a kill) sees the old file or the whole
  new one, never half of it; concurrent writers never share the temporary (`unique_tmp`).
  """
  _replace(path, lambda tmp: tmp.write_text(text))


def replace_bytes(path: epath.Path, data: bytes) -> None:
  """`replace_text` for bytes (e.g. an .npz written to a buffer)."""
  _replace(path, lambda tmp: tmp.write_bytes(data))


def _replace(path: epath.Path, write) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = unique_tmp(path)
  try:
    write(tmp)
    tmp.replace(path)
  except BaseException:
    if not is_uri(path):
      try:
        os.remove(os.fspath(tmp))
      except OSError:
        pass
    raise
