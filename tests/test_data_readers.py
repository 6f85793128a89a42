"""Readers: every format on hand-written files, exact errors for bad input, downloads, tfds."""

from __future__ import annotations

import dataclasses
import io
import pathlib
import urllib.error
import zipfile

import numpy as np
import pytest

from lstmrec_jax import data
from lstmrec_jax.data import download
from lstmrec_jax.data.formats import movielens
from lstmrec_jax.data.formats import pairs
from lstmrec_jax.data.formats import seqfile
from lstmrec_jax.data.formats import table
from lstmrec_jax.data.formats import tfds as tfds_format
from lstmrec_jax.errors import DataError
from helpers import data_config


def write(path: pathlib.Path, text: str, encoding: str = "utf-8") -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.encode(encoding))
  return path


# ----------------------------------------------------------------------------- MovieLens

ML100K_GENRES = "unknown|0\nAction|1\nAdventure|2\n\n"
ML100K_ITEMS = ("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n"
                "2|Café Society (1995)|01-Jan-1995||http://y|0|1|1\n")


def make_ml100k(folder: pathlib.Path) -> pathlib.Path:
  write(folder / "u.data", "196\t1\t3\t881250949\n186\t2\t5\t891717742\n196\t2\t1\t881250950\n")
  write(folder / "u.item", ML100K_ITEMS, "latin-1")
  write(folder / "u.genre", ML100K_GENRES)
  return folder


def test_movielens_100k(tmp_path):
  log = movielens.read_movielens(make_ml100k(tmp_path / "ml-100k"))
  np.testing.assert_array_equal(log.users, [196, 186, 196])
  np.testing.assert_array_equal(log.items, [1, 2, 2])
  np.testing.assert_array_equal(log.timestamps, [881250949, 891717742, 881250950])
  np.testing.assert_array_equal(log.ratings, [3, 5, 1])
  assert log.users.dtype == np.int64
  assert log.item_side.titles == {1: "Toy Story (1995)", 2: "Café Society (1995)"}
  assert log.item_side.attributes == {1: ["Adventure"], 2: ["Action", "Adventure"]}


def test_movielens_1m_latin1_and_10m(tmp_path):
  ml1m = tmp_path / "ml-1m"
  write(ml1m / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
  write(ml1m / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::Misérables, Les (1995)::Drama|Musical\n", "latin-1")
  write(ml1m / "users.dat", "1::F::1::10::48067\n")
  assert movielens.movielens_layout(ml1m)[0] == "ml-1m"
  log = movielens.read_movielens(ml1m)
  np.testing.assert_array_equal(log.items, [1193, 661, 1193])
  assert log.item_side.titles[661] == "Misérables, Les (1995)"
  assert log.item_side.attributes[661] == ["Drama", "Musical"]

  ml10m = tmp_path / "ml-10M100K"
  write(ml10m / "ratings.dat", "1::122::5::838985046\n1::185::4.5::838983525\n")
  write(ml10m / "movies.dat", "122::Boomerang (1992)::Comedy|Romance\n"
        "185::Net, The (1995)::(no genres listed)\n")
  assert movielens.movielens_layout(ml10m)[0] == "ml-10m"
  log = movielens.read_movielens(ml10m)
  np.testing.assert_allclose(log.ratings, [5, 4.5])
  assert log.item_side.attributes == {122: ["Comedy", "Romance"], 185: []}


def make_ml20m(folder: pathlib.Path) -> pathlib.Path:
  write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n"
        "1,29,4.0,1112484676\n2,2,0.5,1112484819\n")
  write(folder / "movies.csv", 'movieId,title,genres\n2,"American President, The (1995)",'
        'Comedy|Drama|Romance\n29,"City of Lost Children, The (Cité des enfants perdus, La)'
        ' (1995)",Adventure|Sci-Fi\n')
  return folder


def test_movielens_20m_csv_with_quoted_commas(tmp_path):
  log = movielens.read_movielens(make_ml20m(tmp_path / "ml-20m"))
  np.testing.assert_array_equal(log.users, [1, 1, 2])
  np.testing.assert_array_equal(log.items, [2, 29, 2])
  np.testing.assert_allclose(log.ratings, [3.5, 4.0, 0.5])
  assert log.item_side.titles[2] == "American President, The (1995)"
  assert log.item_side.titles[29].startswith("City of Lost Children, The (Cité des enfants")
  assert log.item_side.attributes[29] == ["Adventure", "Sci-Fi"]


@pytest.mark.parametrize("ratings,line", [
    ("u.data", "{u}\t{i}\t4\t100\n7\t2\t3\t101\n"),
    ("ratings.dat", "{u}::{i}::4::100\n7::2::3::101\n"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n{u},{i},4,100\n7,2,3,101\n")])
def test_movielens_ids_longer_than_int64_stay_strings(tmp_path, ratings, line):
  # Issue 15, case 8: a 20-digit id was an OverflowError traceback.
  user, item = "98765432109876543210", "12345678901234567890"
  folder = tmp_path / "ml"
  write(folder / ratings, line.format(u=user, i=item))
  if ratings == "ratings.dat":
    write(folder / "users.dat", "")
    write(folder / "movies.dat", f"{item}::Long (2001)::Drama\n2::Short (1999)::Comedy\n")
  elif ratings == "ratings.csv":
    write(folder / "movies.csv", f"movieId,title,genres\n{item},Long (2001),Drama\n")
  log = movielens.read_movielens(folder)
  assert log.users.tolist() == [user, "7"] and log.items.tolist() == [item, "2"]
  np.testing.assert_array_equal(log.timestamps, [100, 101])  # the other columns as before
  if ratings != "u.data":  # the titles' keys follow the ratings' string ids
    assert log.item_side.titles[item] == "Long (2001)"
    assert log.item_side.attributes[item] == ["Drama"]


def test_movielens_detects_nothing(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"u\.data.*ratings\.dat.*ratings\.csv"):
    movielens.read_movielens(tmp_path / "empty")


# ----------------------------------------------------------------------------- benchmark files


def test_seqfile_with_attributes(tmp_path):
  seq = write(tmp_path / "Beauty.txt", "1 1 2 3\n2 4 2\n\n3 5 1 4 2\n")
  attrs = write(tmp_path / "attrs.json", '{"1": [1, 2], "2": [3], "4": ["brand x"]}')
  log = seqfile.read_seqfile(seq, attrs)
  np.testing.assert_array_equal(log.users, [1, 1, 1, 2, 2, 3, 3, 3, 3])
  np.testing.assert_array_equal(log.items, [1, 2, 3, 4, 2, 5, 1, 4, 2])
  assert log.timestamps is None
  assert log.item_side.attributes == {1: [1, 2], 2: [3], 4: ["brand x"]}


def test_pairs_fast_and_line_parser_agree(tmp_path):
  fast = pairs.read_pairs(write(tmp_path / "a.txt", "1 10\n1 11\n2 10\n"))
  # Double spaces and tabs defeat pyarrow; the line parser must give the same log.
  slow = pairs.read_pairs(write(tmp_path / "b.txt", "1  10\n1\t11\n\n2 10\n"))
  for log in (fast, slow):
    np.testing.assert_array_equal(log.users, [1, 1, 2])
    np.testing.assert_array_equal(log.items, [10, 11, 10])


# ----------------------------------------------------------------------------- generic tables


def test_csv_columns_lists_titles_sessions(tmp_path):
  path = write(tmp_path / "log.csv",
               "uid,sku,ts,name,tags,cat\n"
               'u1,A7,2024-01-02T10:00:00,"Lamp, red",home|light,x\n'
               "u2,B1,2024-01-01T09:00:00,Chair,home,y\n"
               "u1,B1,2024-01-01T08:00:00,Chair (dup row),ignored,y\n")
  log = table.read_table(path, columns={"user": "uid", "item": "sku", "time": "ts",
                                          "title": "name", "lists": ["tags", "cat"]})
  np.testing.assert_array_equal(log.users, ["u1", "u2", "u1"])
  np.testing.assert_array_equal(log.items, ["A7", "B1", "B1"])
  assert log.timestamps[2] < log.timestamps[1] < log.timestamps[0]
  assert log.item_side.titles == {"A7": "Lamp, red", "B1": "Chair"}
  assert log.item_side.attributes == {"A7": ["tags:home", "tags:light", "cat:x"],
                                      "B1": ["tags:home", "cat:y"]}
  sessions = table.read_table(
      write(tmp_path / "s.tsv", "s\tu\ti\n9\t1\t5\n9\t1\t6\n4\t2\t5\n"), format="tsv",
      columns={"user": "u", "item": "i", "session": "s"})
  np.testing.assert_array_equal(sessions.users, ["1:9", "1:9", "2:4"])
  assert sessions.items.dtype == np.int64


def test_tsv_without_header_and_parquet(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  log = table.read_table(write(tmp_path / "u.tsv", "7\t3\t100\n7\t4\t90\n"), format="tsv",
                           columns={"user": 0, "item": 1, "time": 2, "header": False})
  np.testing.assert_array_equal(log.items, [3, 4])
  np.testing.assert_array_equal(log.timestamps, [100, 90])
  pq.write_table(pa.table({"user": [1, 1, 2], "item": ["a", "b", "a"], "t": [3.5, 1.25, 2.0],
                           "genres": [["x", "y"], [], None]}), tmp_path / "log.parquet")
  log = table.read_table(tmp_path / "log.parquet", format="parquet",
                           columns={"time": "t", "lists": "genres"})
  np.testing.assert_array_equal(log.users, [1, 1, 2])
  np.testing.assert_array_equal(log.timestamps, [3_500_000, 1_250_000, 2_000_000])
  assert log.item_side.attributes == {"a": ["x", "y"], "b": []}


def test_table_times_with_zones_and_parquet_rows(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  # Zone offsets pyarrow's cast refuses: parsed one by one, ordered as UTC.
  log = table.read_table(write(tmp_path / "z.csv", "user,item,time\n1,2,2020-01-01T00:00:00Z\n"
                               "1,3,2020-01-01T00:00:00+05:00\n1,4,2020-01-01T01:00:00+01:00\n"),
                         columns={"time": "time"})
  assert np.argsort(log.timestamps).tolist() == [1, 0, 2]
  # A Parquet file has rows, not lines: the message says which row (1-based).
  path = tmp_path / "bad.parquet"
  pq.write_table(pa.table({"user": [1, 1, 2, 2], "item": [1, 2, 3, 4],
                           "time": ["100", "101", "1o2", "103"]}), path)
  with pytest.raises(DataError) as info:
    table.read_table(path, format="parquet", columns={"time": "time"})
  assert str(info.value).startswith(f"{path}: row 3: unparseable time '1o2'"), info.value
  pq.write_table(pa.table({"user": [1, None], "item": [1, 2]}), path)
  with pytest.raises(DataError, match=r"bad\.parquet: row 2: missing user id"):
    table.read_table(path, format="parquet")


def test_fingerprint_matches_reader_and_tracks_bytes(tmp_path):
  path = write(tmp_path / "p.txt", "1 2\n1 3\n")
  before = pairs.source_fingerprint(path)
  assert pairs.read_pairs(path).fingerprint == before
  ml = make_ml20m(tmp_path / "ml-20m")
  assert movielens.read_movielens(ml).fingerprint == movielens.source_fingerprint(ml)
  cols = {"user": "uid", "item": "sku"}
  csv_path = write(tmp_path / "t.csv", "uid,sku\n1,2\n")
  assert (table.read_table(csv_path, columns=cols).fingerprint ==
          table.source_fingerprint(csv_path, columns=cols))
  write(path, "1 2\n1 4\n")
  assert pairs.source_fingerprint(path) != before


# ----------------------------------------------------------------------------- bad input

# (file name, content, reader, expected "<file>:<line>" and problem fragment)
BAD_INPUTS = [
    ("u.data", "1\t2\t3\t4\n1\tx\t3\t5\n", "ml", 2, "non-integer item"),
    ("u.data", "1\t2\t3\t4\n\n1\t2\t3\n", "ml", 3, "expected 4 fields"),
    ("u.data", "1\t2\t3\t4\n1\t3\t4\t123456789012345678901\n", "ml", 2,
     "timestamp '123456789012345678901' is beyond the int64 range"),
    ("ratings.dat", "1::2::3::4\n1::abc::5::97\n", "ml", 2, "non-integer item"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3\n", "ml", 3,
     "expected 4 fields"),
    ("ratings.csv", "userId,movie,rating,timestamp\n1,2,3,4\n", "ml", 1, "header"),
    ("Beauty.txt", "1 2 3\n2 4 x5\n", "seq", 2, "non-integer item id 'x5'"),
    ("Beauty.txt", "1 2 3\n2 4\n7\n", "seq", 3, "expected 'user item"),
    ("Beauty.txt", "1 2 3\n2 4\n1 5\n", "seq", 3, "user 1 already has a line (1)"),
    ("Beauty.txt", "", "seq", 1, "empty file"),
    ("Video.txt", "1 2\n1 3\n\n1 2 3\n", "pairs", 4, "expected 2 fields"),
    ("Video.txt", "1 2\nu7 3\n", "pairs", 2, "non-integer user"),
    ("Video.txt", "\n\n", "pairs", 1, "empty file"),
    ("log.csv", "user,item\n1,2\n3,4,5\n", "csv", 3, "expected 2 fields, got 3"),
    ("log.csv", "user,itm\n1,2\n", "csv", 1, "missing item column 'item'"),
    ("log.csv", "user,item,time\n1,2,5\n1,,6\n", "csv", 3, "missing item id"),
    ("log.csv", "user,item,time\n1,2,2024-01-01\n1,3,yesterday\n", "csv", 3,
     "unparseable time 'yesterday'"),
    ("log.csv", "user,item,rating\n1,2,5\n1,3,4\n1,4,good\n", "csv", 4,
     "non-numeric rating 'good'"),
    # Issue 15, case 9: one bad time among integers (or ISO dates) turns pyarrow's column into
    # strings; the message named line 2 and its good value.
    ("log.csv", "user,item,time\n1,2,100\n1,3,101\n2,2,102\n2,4,103\n3,2,104\n3,5,1o5\n"
     "3,6,106\n", "csv", 7, "unparseable time '1o5'"),
    ("log.csv", "user,item,time\n" + "".join(f"1,{i},2020-01-0{i}T00:00:00\n" for i in
                                           range(1, 6)) + "1,7,2020-13-45T99:00:00\n",
     "csv", 7, "unparseable time '2020-13-45T99:00:00'"),
    ("log.csv", "user,item,time\n1,2,100\n1,3,101\n1,4,102\n1,5,\n1,6,104\n", "csv", 5,
     "missing time"),
    ("log.csv", "user,item,time\n1,2,100\n1,3,101\n1,4,2024-01-01\n", "csv", 4,
     "time '2024-01-01' is an ISO-8601 date-time without a zone; most times here are numbers"),
    ("log.tsv", "user\titem\ttime\n1\t2\t100\n1\t3\t101\n1\t4\tnoon\n", "tsv", 4,
     "unparseable time 'noon'"),
]


def _read(kind: str, path: pathlib.Path):
  if kind == "ml":
    return movielens.read_movielens(path.parent)
  if kind == "seq":
    return seqfile.read_seqfile(path)
  if kind == "pairs":
    return pairs.read_pairs(path)
  header = path.read_text().split("\n")[0].replace("\t", ",").split(",")
  cols = {role: role for role in ("time", "rating") if role in header}
  return table.read_table(path, format=kind, columns=cols)


@pytest.mark.parametrize("name,content,kind,line,problem", BAD_INPUTS)
def test_bad_input_names_file_and_line(tmp_path, name, content, kind, line, problem):
  path = write(tmp_path / "d" / name, content)
  with pytest.raises(DataError) as info:
    _read(kind, path)
  message = str(info.value)
  assert message.startswith(f"{path}:{line}: "), message
  assert problem in message
  assert "\n" not in message
  assert info.value.__suppress_context__ or info.value.__context__ is None


def test_more_bad_files(tmp_path):
  with pytest.raises(DataError, match=r"nothere\.txt: file not found"):
    pairs.read_pairs(tmp_path / "nothere.txt")
  bad_utf8 = tmp_path / "Beauty.txt"
  bad_utf8.write_bytes(b"1 2 3\n2 \xff 4\n")
  with pytest.raises(DataError, match=r"Beauty\.txt:2: not valid utf-8"):
    seqfile.read_seqfile(bad_utf8)
  seq = write(tmp_path / "s.txt", "1 2 3\n")
  attrs = write(tmp_path / "a.json", '{"2": [1, 2],\n "3": [4\n}')
  with pytest.raises(DataError, match=r"a\.json:3: invalid JSON"):
    seqfile.read_seqfile(seq, attrs)
  attrs = write(tmp_path / "b.json", '{"2": [1, 2],\n "x": [4]}')
  with pytest.raises(DataError, match=r"b\.json:2: non-integer item id 'x'"):
    seqfile.read_seqfile(seq, attrs)
  item = make_ml100k(tmp_path / "ml-100k") / "u.item"
  write(item, "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n2|Broken|x|y\n", "latin-1")
  with pytest.raises(DataError, match=r"u\.item:2: expected 8 '\|'-separated fields"):
    movielens.read_movielens(item.parent)
  movies = make_ml20m(tmp_path / "ml-20m") / "movies.csv"
  write(movies, "movieId,title,genres\n2,American President, The (1995),Comedy\n")
  with pytest.raises(DataError, match=r"movies\.csv:2: expected 3 fields, got 4"):
    movielens.read_movielens(movies.parent)
  pq_path = tmp_path / "x.parquet"
  pq_path.write_bytes(b"PAR1 this is not parquet")
  with pytest.raises(DataError, match=r"x\.parquet: not a readable Parquet file"):
    table.read_table(pq_path, format="parquet")


# ----------------------------------------------------------------------------- load_dataset


def test_data_config_names_every_bad_key_at_once():
  from lstmrec_jax.configs import base

  group = base.get_base_config().data.to_dict()
  assert {f.name for f in dataclasses.fields(data.DataConfig)} == set(group)
  del group["split"], group["columns"]["rating"]
  group.update(formt="pairs", format="txt", min_user_events=-1, temporal_fractions=(0.5, 0.6, 0),
               download="yes")
  group["columns"]["usr"] = "a"
  group["synthetic"] = {"num_user": 3}
  with pytest.raises(DataError) as info:
    data.DataConfig.from_mapping(group)
  message = str(info.value)
  for problem in ("unknown key data.formt", "missing key data.split",
                  "data.format: unknown format 'txt'; expected one of synthetic, movielens",
                  "data.min_user_events: expected a non-negative integer",
                  "data.temporal_fractions: expected three positive numbers",
                  "data.download: expected True or False", "data.columns.usr: unknown key",
                  "data.columns.rating: missing", "data.synthetic.num_user: unknown key"):
    assert problem in message, (problem, message)
  assert "\n" not in message
  with pytest.raises(TypeError, match="DataConfig.from_mapping"):
    data.load_dataset({"format": "synthetic"})


def test_data_config_conventions():
  cfg = data_config(path="", attributes_path=False, min_rating=0, cache_dir="c",
                    columns={"session": "", "lists": "genres", "delimiter": ""})
  assert cfg.path is None and cfg.attributes_path is False and cfg.min_rating is None
  assert cfg.cache_dir == "c" and cfg.temporal_fractions == (0.8, 0.1, 0.1)
  assert cfg.columns == data.Columns(user="user_id", item="item_id", time="timestamp",
                                     lists=("genres",))
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.path = "x"  # type: ignore[misc]
  assert data.DataConfig.from_mapping(cfg) is cfg


def test_load_dataset_errors_say_what_a_format_expects(tmp_path):
  with pytest.raises(DataError, match="path is not set.*one user per line"):
    data.load_dataset(data_config(format="seqfile"))
  with pytest.raises(DataError, match=r"Video\.txt: file not found.*'user item' pair"):
    data.load_dataset(data_config(format="pairs", path=str(tmp_path / "Video.txt")))
  with pytest.raises(DataError, match=r"ml-1m: no MovieLens release here.*download=True.*"
                     r"ml-1m\.zip by hand.*ratings\.dat exists"):
    data.load_dataset(data_config(format="movielens", path=str(tmp_path / "ml-1m")))
  with pytest.raises(DataError, match="path is not set.*download=True with a path"):
    data.load_dataset(data_config(format="movielens"))
  with pytest.raises(DataError, match="format 'tfds' needs tfds_name"):
    data.load_dataset(data_config(format="tfds"))


# ----------------------------------------------------------------------------- download


def zip_bytes(files: dict[str, str]) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    for name, text in files.items():
      z.writestr(name, text)
  return buf.getvalue()


ML1M_ZIP = {"ml-1m/ratings.dat": "1::10::5::100\n1::11::4::101\n1::12::3::102\n",
            "ml-1m/movies.dat": "10::A (1990)::Drama\n11::B (1991)::Comedy\n12::C::Drama\n",
            "ml-1m/users.dat": "1::F::1::10::48067\n", "ml-1m/README": "readme\n"}


@pytest.fixture
def fake_urlopen(monkeypatch):
  """Serves {url: bytes or exception}; records the URLs asked for."""
  served, asked = {}, []

  def urlopen(url, timeout=None):
    del timeout
    asked.append(url)
    body = served.get(url, urllib.error.URLError("no network here"))
    if isinstance(body, Exception):
      raise body
    return io.BytesIO(body)

  monkeypatch.setattr(download, "urlopen", urlopen)
  return served, asked


def test_download_verifies_and_unzips(tmp_path, fake_urlopen, monkeypatch):
  import hashlib
  served, asked = fake_urlopen
  blob = zip_bytes(ML1M_ZIP)
  url = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
  served[url] = blob
  # The real zip's sha256 stays pinned; this test's zip gets its own.
  monkeypatch.setitem(download.RELEASES, "ml-1m", dataclasses.replace(
      download.RELEASES["ml-1m"], zip_sha256=hashlib.sha256(blob).hexdigest()))
  ds = data.load_dataset(data_config(format="movielens", path=str(tmp_path / "ml-1m"),
                                     download=True))
  assert asked == [url]
  assert (tmp_path / "ml-1m" / "ratings.dat").is_file()
  assert ds.num_users == 1 and ds.num_items == 4
  assert ds.item_titles[1:] == ["A (1990)", "B (1991)", "C"]
  assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_download_checksum_mismatch_and_offline(tmp_path, fake_urlopen):
  served, _ = fake_urlopen
  url = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
  served[url] = zip_bytes(ML1M_ZIP)
  with pytest.raises(DataError, match=r"ml-1m\.zip: sha256 .* differs from the expected a6898a"):
    download.download_movielens(tmp_path / "ml-1m")
  assert not (tmp_path / "ml-1m").exists()
  with pytest.raises(DataError) as info:
    data.load_dataset(data_config(format="movielens", path=str(tmp_path / "ml-25m"),
                                  download=True))
  message = str(info.value)
  assert message.startswith("https://files.grouplens.org/datasets/movielens/ml-25m.zip: "
                            "download failed (no network here)")
  assert str(tmp_path / "ml-25m" / "ratings.csv") in message
  with pytest.raises(DataError, match="cannot tell which MovieLens release"):
    data.load_dataset(data_config(format="movielens", path=str(tmp_path / "movies"),
                                  download=True))


def test_download_without_zip_checksum_checks_files(tmp_path, fake_urlopen, monkeypatch):
  served, _ = fake_urlopen
  served["https://files.grouplens.org/datasets/movielens/ml-10m.zip"] = zip_bytes(
      {"ml-10M100K/ratings.dat": "1::2::3::4\n", "ml-10M100K/movies.dat": "2::X::Drama\n"})
  ml10m = download.download_movielens(tmp_path / "ml-10M100K")
  assert movielens.read_movielens(ml10m).items[0] == 2
  # 100K: the extracted u.data must have GroupLens' md5.
  blob = zip_bytes({"ml-100k/u.data": "1\t2\t3\t4\n", "ml-100k/u.item": "x", "ml-100k/u.genre": "x"})
  served["https://files.grouplens.org/datasets/movielens/ml-100k.zip"] = blob
  import hashlib
  monkeypatch.setitem(download.RELEASES, "ml-100k", dataclasses.replace(
      download.RELEASES["ml-100k"], zip_sha256=hashlib.sha256(blob).hexdigest()))
  with pytest.raises(DataError, match="u.data has md5 .*, expected 6e47046882bad158b0efbb84cd5cb987"):
    download.download_movielens(tmp_path / "ml-100k")


# ----------------------------------------------------------------------------- tfds


def test_tfds_movielens_with_mock_data():
  import tensorflow as tf
  import tensorflow_datasets as tfds

  rows = [  # (user_id, movie_id, timestamp, title, genre labels, rating) as tfds stores them
      (b"138", b"357", 879024327, b"One Flew Over the Cuckoo's Nest (1975)", [7], 4.0),
      (b"92", b"709", 875654590, b"Strictly Ballroom (1992)", [4, 14], 2.0),
      (b"138", b"709", 879024100, b"Strictly Ballroom (1992)", [4, 14], 5.0),
      (b"138", b"1", 879024000, b"Toy Story (1995)", [2, 3, 4], 4.0),
  ]

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs

    def gen():
      for user, movie, ts, title, genres, rating in rows:
        yield {"user_id": user, "movie_id": movie, "timestamp": ts, "movie_title": title,
               "movie_genres": np.asarray(genres, np.int64), "user_rating": rating,
               "user_gender": True, "bucketized_user_age": 25.0, "raw_user_age": 26.0,
               "user_occupation_label": 3, "user_occupation_text": b"writer",
               "user_zip_code": b"55105"}

    sig = {"user_id": tf.TensorSpec((), tf.string), "movie_id": tf.TensorSpec((), tf.string),
           "timestamp": tf.TensorSpec((), tf.int64), "movie_title": tf.TensorSpec((), tf.string),
           "movie_genres": tf.TensorSpec((None,), tf.int64),
           "user_rating": tf.TensorSpec((), tf.float32),
           "user_gender": tf.TensorSpec((), tf.bool),
           "bucketized_user_age": tf.TensorSpec((), tf.float32),
           "raw_user_age": tf.TensorSpec((), tf.float32),
           "user_occupation_label": tf.TensorSpec((), tf.int64),
           "user_occupation_text": tf.TensorSpec((), tf.string),
           "user_zip_code": tf.TensorSpec((), tf.string)}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_dataset_fn=as_dataset):
    log = tfds_format.read_tfds("tfds:movielens/100k-ratings")
    ds = data.load_dataset(data_config(path="tfds:movielens/100k-ratings"))
  np.testing.assert_array_equal(log.users, [138, 92, 138, 138])
  np.testing.assert_array_equal(log.items, [357, 709, 709, 1])
  np.testing.assert_array_equal(log.timestamps, [879024327, 875654590, 879024100, 879024000])
  np.testing.assert_allclose(log.ratings, [4, 2, 5, 4])
  assert log.item_side.titles[709] == "Strictly Ballroom (1992)"
  assert log.item_side.attributes == {357: ["Drama"], 709: ["Comedy", "Romance"],
                                      1: ["Animation", "Children", "Comedy"]}
  # User 92 has one event and leaves; 138's events in time order are movies 1, 709, 357.
  assert ds.user_keys.tolist() == [138] and ds.item_keys[1:].tolist() == [1, 357, 709]
  assert ds.train[0].tolist() == [1] and ds.valid.targets_U.tolist() == [3]
  assert ds.test.targets_U.tolist() == [2]
  with pytest.raises(DataError, match="only tfds movielens"):
    tfds_format.read_tfds("mnist")


# ----------------------------------------------------------------------------- shared data


@pytest.mark.shared_data
def test_shared_data_counts(shared_data):
  beauty = seqfile.read_seqfile(shared_data / "amazon-beauty" / "Beauty.txt",
                                shared_data / "amazon-beauty" / "Beauty_item2attributes.json")
  games = pairs.read_pairs(shared_data / "amazon-games" / "Video.txt")
  ml = movielens.read_movielens(shared_data / "ml-100k")
  for log, users, items, events in ((beauty, 22_363, 12_101, 198_502),
                                    (games, 31_013, 23_715, 287_107),
                                    (ml, 943, 1_682, 100_000)):
    assert (len(np.unique(log.users)), len(np.unique(log.items)), len(log)) == (
        users, items, events)
  assert ml.item_side.titles[1] == "Toy Story (1995)"
  assert ml.item_side.attributes[1] == ["Animation", "Children's", "Comedy"]
  ds = data.load_dataset(data_config(
      format="seqfile", path=str(shared_data / "amazon-beauty" / "Beauty.txt")))
  assert (ds.num_users, ds.num_items - 1, ds.num_attrs - 1) == (22_363, 12_101, 637)
  assert len(ds.train.items_N) + len(ds.valid) + len(ds.test) == 198_502
