"""Official MovieLens downloads from GroupLens, verified and unzipped where the reader looks.

Only `load_dataset(..., download=True)` calls this, for a MovieLens folder that does not exist
yet. Offline, it fails with a `DataError` naming the URL and exactly where to put the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import urllib.error
from urllib.request import urlopen  # module attribute: tests replace it, never the network
import zipfile

from absl import logging

from lstmrec_jax.errors import DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens/"


@dataclasses.dataclass(frozen=True)
class Release:
  """One MovieLens zip: its name, the folder inside it, the files that must come out of it."""

  zip_name: str
  folder_in_zip: str
  key_files: tuple[str, ...]
  # sha256 of the zip, where known. These are the values tensorflow_datasets 4.9.10 pins in
  # tensorflow_datasets/url_checksums/movielens.txt for the same GroupLens URLs; for 10M and 32M
  # no checksum is known here, so only the extracted files are checked (present, non-empty).
  zip_sha256: str | None
  # md5 of extracted files, where known (u.data of 100K, the value GroupLens' files have).
  file_md5: tuple[tuple[str, str], ...] = ()

  @property
  def url(self) -> str:
    return BASE_URL + self.zip_name


RELEASES = {
    "ml-100k": Release(
        "ml-100k.zip", "ml-100k", ("u.data", "u.item", "u.genre"),
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        (("u.data", "6e47046882bad158b0efbb84cd5cb987"),)),
    "ml-1m": Release(
        "ml-1m.zip", "ml-1m", ("ratings.dat", "movies.dat", "users.dat"),
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-10m": Release("ml-10m.zip", "ml-10M100K", ("ratings.dat", "movies.dat"), None),
    "ml-20m": Release(
        "ml-20m.zip", "ml-20m", ("ratings.csv", "movies.csv"),
        "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
    "ml-25m": Release(
        "ml-25m.zip", "ml-25m", ("ratings.csv", "movies.csv"),
        "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
    "ml-32m": Release("ml-32m.zip", "ml-32m", ("ratings.csv", "movies.csv"), None),
}
_ALIASES = {"ml-10m100k": "ml-10m"}


def release_for_path(path: str | os.PathLike[str]) -> str:
  """The release a folder is named after, e.g. `.../ml-1m` -> "ml-1m"."""
  name = pathlib.Path(path).name.lower()
  name = _ALIASES.get(name, name)
  if name not in RELEASES:
    raise DataError(f"{path}: cannot tell which MovieLens release to download from the folder"
                    f" name {pathlib.Path(path).name!r}; name the folder one of"
                    f" {', '.join(RELEASES)}")
  return name


def manual_instructions(path: str | os.PathLike[str], release: str) -> str:
  """Where a hand-downloaded release must go, in one sentence."""
  rel = RELEASES[release]
  path = pathlib.Path(path)
  return (f"download {rel.url} by hand and unzip it so that {path / rel.key_files[0]} exists"
          f" (the files of the zip's {rel.folder_in_zip}/ folder go directly into {path})")


def download_movielens(path: str | os.PathLike[str], release: str | None = None) -> pathlib.Path:
  """Downloads, verifies and unzips a MovieLens release into `path`.

  Args:
    path: the folder to create (e.g. `data/ml-1m`); the release's files land directly in it.
    release: one of `RELEASES`; None takes it from the folder name.

  Returns:
    `path`.

  Raises:
    DataError: the download failed (offline), the checksum differs, or the zip lacks files.
  """
  path = pathlib.Path(path)
  release = release or release_for_path(path)
  rel = RELEASES[release]
  where = manual_instructions(path, release)
  path.parent.mkdir(parents=True, exist_ok=True)
  part = path.parent / f".{rel.zip_name}.part{os.getpid()}"
  logging.info("downloading %s to %s", rel.url, path)
  digest = hashlib.sha256()
  try:
    with urlopen(rel.url, timeout=60) as response, open(part, "wb") as out:
      while chunk := response.read(1 << 20):
        out.write(chunk)
        digest.update(chunk)
  except (urllib.error.URLError, OSError, ValueError) as e:
    part.unlink(missing_ok=True)
    reason = getattr(e, "reason", None) or e
    raise DataError(f"{rel.url}: download failed ({reason}); {where}") from None
  try:
    if rel.zip_sha256 and digest.hexdigest() != rel.zip_sha256:
      raise DataError(f"{rel.url}: sha256 {digest.hexdigest()} differs from the expected"
                      f" {rel.zip_sha256} (a corrupt download?); retry, or {where}")
    if not rel.zip_sha256:
      logging.warning("%s: no known checksum; checking the extracted files only", rel.url)
    _extract(part, rel, path, where)
  finally:
    part.unlink(missing_ok=True)
  logging.info("MovieLens %s is in %s", release, path)
  return path


def _extract(zip_path: pathlib.Path, rel: Release, path: pathlib.Path, where: str) -> None:
  """Unzips the release folder's files into `path` via a temporary sibling folder."""
  tmp = path.parent / f".{path.name}.extract{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  prefix = rel.folder_in_zip + "/"
  try:
    with zipfile.ZipFile(zip_path) as z:
      for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
          continue
        name = pathlib.PurePosixPath(info.filename[len(prefix):])
        if name.is_absolute() or ".." in name.parts:
          raise DataError(f"{rel.url}: unsafe path {info.filename!r} in the zip")
        target = tmp.joinpath(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
          shutil.copyfileobj(src, dst)
    for name in rel.key_files:
      f = tmp / name
      if not f.is_file() or f.stat().st_size == 0:
        raise DataError(f"{rel.url}: the zip has no {prefix}{name}; {where}")
    for name, md5 in rel.file_md5:
      with open(tmp / name, "rb") as fh:
        got = hashlib.file_digest(fh, "md5").hexdigest()
      if got != md5:
        raise DataError(f"{rel.url}: {name} has md5 {got}, expected {md5}; {where}")
    if path.exists():
      for f in tmp.iterdir():
        os.replace(f, path / f.name)
    else:
      os.replace(tmp, path)
  except zipfile.BadZipFile as e:
    raise DataError(f"{rel.url}: not a valid zip ({e}); {where}") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
