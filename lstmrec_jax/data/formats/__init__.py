"""The format registry: name -> `Format`, the one place a data config's format is dispatched.

Built in: synthetic, movielens, seqfile, pairs, csv, tsv, parquet, tfds, crossdomain (one module
each; csv / tsv / parquet share `table`). A new format needs no edit of `load_dataset`:

  register_format(Format("jsonl", read=lambda path, cfg: my_reader(path),
                         expected="a JSON-lines file, one event per line"))

after which `data.format = "jsonl"` validates and loads. A `Format` that gives `fingerprint`
(the log's fingerprint computed from the file bytes without parsing) lets `load_dataset` find
its cache entry before the read; without one the cache is looked up after it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from lstmrec_jax.errors import DataError
from lstmrec_jax.data.formats import crossdomain
from lstmrec_jax.data.formats import movielens
from lstmrec_jax.data.formats import pairs
from lstmrec_jax.data.formats import seqfile
from lstmrec_jax.data.formats import synthetic
from lstmrec_jax.data.formats import table
from lstmrec_jax.data.formats import tfds
from lstmrec_jax.data.log import InteractionLog

if TYPE_CHECKING:  # config.py imports this module; the readers only need the type
  from lstmrec_jax.data.config import DataConfig


@dataclasses.dataclass(frozen=True)
class Format:
  """One input format: how to read it, what its path must be, and its cheap fingerprint."""

  name: str  # the value of `data.format`
  # (the located source, or None when not `reads_path`; the data config) -> the log
  read: Callable[[pathlib.Path | None, DataConfig], InteractionLog]
  expected: str  # what the source must be, for error messages ("a text file with ...")
  reads_path: bool = True  # False: no file behind it (synthetic, tfds); `path` is ignored
  # (located source, config) -> the `fingerprint` `read` will give its log, without parsing;
  # None: the cache is looked up only after the read
  fingerprint: Callable[[pathlib.Path, DataConfig], str] | None = None
  # (data.path, config) -> the source, e.g. after a download; None: `path` must exist
  locate: Callable[[str | None, DataConfig], pathlib.Path] | None = None


_REGISTRY: dict[str, Format] = {}


def register_format(fmt: Format, *, replace: bool = False) -> Format:
  """Adds `fmt` under `fmt.name`; an existing name is an error unless `replace`."""
  if not fmt.name or not isinstance(fmt.name, str):
    raise ValueError(f"a format needs a non-empty name, got {fmt.name!r}")
  if fmt.name in _REGISTRY and not replace:
    raise ValueError(f"format {fmt.name!r} is already registered (pass replace=True)")
  _REGISTRY[fmt.name] = fmt
  return fmt


def format_names() -> tuple[str, ...]:
  """The registered format names, in registration order."""
  return tuple(_REGISTRY)


def get_format(name: str) -> Format:
  """The registered `Format` called `name`; a DataError naming the known ones otherwise."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise DataError(f"data config: unknown format {name!r}; expected one of"
                    f" {', '.join(_REGISTRY)}") from None


def locate_source(fmt: Format, cfg: DataConfig) -> pathlib.Path | None:
  """The file or folder `fmt` reads for `cfg`; None for formats without one."""
  if not fmt.reads_path:
    return None
  if fmt.locate is not None:
    return fmt.locate(cfg.path, cfg)
  if cfg.path is None:
    raise DataError(f"data config: path is not set; format {fmt.name!r} reads {fmt.expected}")
  path = pathlib.Path(os.path.expanduser(cfg.path))
  if not path.exists():
    extra = " (download=True only fetches MovieLens releases)" if cfg.download else ""
    raise DataError(f"{path}: file not found; format {fmt.name!r} reads {fmt.expected}{extra}")
  return path


# ----------------------------------------------------------------------------- built-in formats
# Adapters from (path, config) to each reader's own arguments: the readers never see a config.


def _read_tfds(_, cfg: DataConfig) -> InteractionLog:
  if not cfg.tfds_name:
    raise DataError("data config: format 'tfds' needs tfds_name, e.g. 'movielens/1m-ratings'")
  return tfds.read_tfds(cfg.tfds_name, data_dir=cfg.tfds_data_dir, download=cfg.download)


def _table(name: str) -> Format:
  return Format(
      name, expected=table.EXPECTED[name],
      read=lambda path, cfg: table.read_table(path, format=name, columns=cfg.columns),
      fingerprint=lambda path, cfg: table.source_fingerprint(path, format=name,
                                                             columns=cfg.columns))


for _fmt in (
    Format("synthetic", read=lambda _, cfg: synthetic.read_synthetic(cfg.synthetic),
           expected=synthetic.EXPECTED, reads_path=False),
    Format("movielens", read=lambda path, _: movielens.read_movielens(path),
           expected=movielens.EXPECTED,
           fingerprint=lambda path, _: movielens.source_fingerprint(path),
           locate=lambda path, cfg: movielens.locate(path, download=cfg.download)),
    Format("seqfile", expected=seqfile.EXPECTED,
           read=lambda path, cfg: seqfile.read_seqfile(
               path, seqfile.attributes_file(path, cfg.attributes_path, announce=True)),
           fingerprint=lambda path, cfg: seqfile.source_fingerprint(
               path, seqfile.attributes_file(path, cfg.attributes_path))),
    Format("pairs", read=lambda path, _: pairs.read_pairs(path), expected=pairs.EXPECTED,
           fingerprint=lambda path, _: pairs.source_fingerprint(path)),
    *(_table(name) for name in table.TABLE_FORMATS),
    Format("tfds", read=_read_tfds, expected=tfds.EXPECTED, reads_path=False),
    Format("crossdomain", expected=crossdomain.EXPECTED,
           read=lambda path, cfg: crossdomain.read_crossdomain(
               path, cfg.domains_path, cfg.domain_names),
           fingerprint=lambda path, cfg: crossdomain.source_fingerprint(
               path, crossdomain.domains_file(path, cfg.domains_path), cfg.domain_names)),
):
  register_format(_fmt)
del _fmt

__all__ = ["Format", "format_names", "get_format", "locate_source", "register_format"]
