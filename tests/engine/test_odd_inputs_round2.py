"""The second round of what real corpora bring to `score` (issue 39): member names starting with `__`, output
names longer than a file name may be, folders that cannot be read or that are symbolic links, shard lists
saved by Windows editors, and characters that fsspec gives a meaning to in local paths. Shards are made with
GNU tar, as users make them; every sample is one row, and what cannot be read is said, never skipped."""

from __future__ import annotations

import codecs
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import corpus
import pyarrow.parquet as pq
import pytest
import webdataset.tariterators as wds

from dpiqa.engine.executor.local import LocalExecutor
from dpiqa.engine.output import OutputLocation
from dpiqa.engine.pipeline import ScoreConfig, run_score

MODEL = "dpiqa-student-tiny"
REPO = Path(__file__).resolve().parents[2]


def score(input: str, output: str | Path, **kw) -> dict:  # the option's name
    return run_score(ScoreConfig(input=input, output=str(output), model=MODEL, **kw), LocalExecutor()).manifest


def rows(output: str | Path) -> list[dict]:
    loc = OutputLocation(str(output))
    out = []
    for name in sorted(loc.done()):
        out += pq.read_table(loc.child("scores", f"{name}.parquet")).to_pylist()
    return out


def gnu_tar(shard: Path, folder: Path, *names: str) -> None:
    shard.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-cf", str(shard), "-C", str(folder), *names], check=True)


def images(folder: Path, *names: str) -> Path:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(corpus.jpeg(i, size=(24, 20)))
    return folder


def webdataset_keys(shard: Path) -> list[str]:
    """The samples' keys as webdataset itself reads the shard (its default metadata rules)."""
    with open(shard, "rb") as f:
        files = [{**m, "__url__": str(shard)} for m in wds.tar_file_iterator(f)]
    return [s["__key__"] for s in wds.group_by_keys(files)]


def test_members_whose_names_start_with_two_underscores_are_samples(tmp_path):
    """`__0001.jpg` and `x/__y.jpg` are images like any other (webdataset reads them); only webdataset's
    metadata names (`__key__`, a `__meta__/` folder) are not samples."""
    src = images(tmp_path / "src", "__0001.jpg", "x/__y.jpg", "plain.jpg", "__meta__/z.jpg")
    (src / "__key__").write_bytes(b"metadata")
    shard = tmp_path / "in" / "00000.tar"
    gnu_tar(shard, src, "__key__", "__0001.jpg", "x/__y.jpg", "plain.jpg", "__meta__/z.jpg")
    expected = webdataset_keys(shard)
    assert expected == ["__0001", "x/__y", "plain"]  # webdataset's own reading, not ours
    manifest = score(str(shard.parent), tmp_path / "out")
    assert manifest["rows"] == 3 and manifest["statuses"] == {"ok": 3}
    assert [r["key"] for r in rows(tmp_path / "out")] == expected


def test_output_names_too_long_for_a_file_name_are_shortened_before_scoring(tmp_path):
    """A folder chain below the input whose `__`-joined name exceeds the 255 bytes a file name may hold: the
    shard is scored once under a shortened name that stays the same on the next run, and two shards whose long
    names differ only in the middle get two names."""
    root = tmp_path / "catalog"
    d, f = "d" * 120, "f" * 120
    src = images(tmp_path / "src", "a.jpg", "b.jpg")
    for middle in ("e1" + "e" * 100, "e2" + "e" * 100):
        gnu_tar(root / d / middle / f / "00001.tar", src, "a.jpg", "b.jpg")
    out = tmp_path / "out"
    manifest = score(str(root), out)
    assert manifest["shards"] == {"total": 2, "skipped_done": 0, "written": 2, "failed": 0}
    names = sorted(OutputLocation(str(out)).done())
    assert len(names) == 2 and names[0] != names[1]
    for name in names:
        assert len(name.encode()) <= 200 and name.startswith("ddd") and name.endswith("fff__00001")
        assert (out / "scores" / f"{name}.parquet").is_file()
    assert len(rows(out)) == 4
    again = score(str(root), out)  # the same names on the next run: nothing scored twice
    assert again["shards"] == {"total": 2, "skipped_done": 2, "written": 0, "failed": 0}
    assert sorted(OutputLocation(str(out)).done()) == names


def test_a_symbolic_link_to_a_folder_inside_the_input_is_followed(tmp_path):
    """Catalogs gather their parts with links (`ln -s /mnt/disk2/night-2 catalog/night-2`): the shards behind
    the link are scored, named by the link's path; a link back up the tree is walked once."""
    elsewhere = tmp_path / "disk2" / "night-2"
    src = images(tmp_path / "src", "a.jpg", "b.jpg")
    gnu_tar(elsewhere / "00000.tar", src, "a.jpg", "b.jpg")
    root = tmp_path / "catalog"
    gnu_tar(root / "night-1" / "00000.tar", src, "a.jpg")
    os.symlink(elsewhere, root / "night-2")
    os.symlink(root, root / "night-1" / "loop")  # back up the tree
    out = tmp_path / "out"
    manifest = score(str(root), out)
    assert manifest["shards"]["written"] == 2 and manifest["rows"] == 3
    assert sorted(OutputLocation(str(out)).done()) == ["night-1__00000", "night-2__00000"]


def _as_user_without_root_powers() -> list[str]:
    """A command prefix under which permissions hold: as root (who reads every folder), drop the capabilities
    that bypass them (`setpriv`, util-linux)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a folder root cannot read cannot be made")
    return [setpriv, "--bounding-set=-all"]


def test_a_folder_that_cannot_be_read_is_named_not_skipped(tmp_path):
    """`score` refuses at once (exit 4, nothing written) naming the folder; `--skip-missing` lists the shards
    that can be read and warns naming it. Run in processes where permissions hold (root sheds its powers)."""
    root = tmp_path / "catalog"
    src = images(tmp_path / "src", "a.jpg", "b.jpg")
    gnu_tar(root / "night-1" / "00000.tar", src, "a.jpg")
    gnu_tar(root / "night-2" / "00000.tar", src, "a.jpg", "b.jpg")
    (root / "night-2").chmod(0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(RAY_USAGE_STATS_ENABLED="0", AWS_EC2_METADATA_DISABLED="true", HF_HUB_OFFLINE="1")
    python = [*_as_user_without_root_powers(), sys.executable]
    try:
        refused = subprocess.run(
            [*python, "-m", "dpiqa.jobs.cli", "score", "--input", str(root), "--output", str(tmp_path / "o")]
            + ["--model", MODEL, "--executor", "local"],
            env=env,
            capture_output=True,
            text=True,
        )
        listed = subprocess.run(
            [
                *python,
                "-c",
                "import sys; from dpiqa.engine.shards.listing import list_shards; "
                "print(list(list_shards(sys.argv[1], skip_missing=True).names.values()))",
                str(root),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        (root / "night-2").chmod(0o755)
    assert refused.returncode == 4, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert f"{root / 'night-2'}: Permission denied" in line and "1 folder(s) below it cannot be read" in line
    assert "--skip-missing" in line and not (tmp_path / "o").exists()
    assert listed.returncode == 0 and listed.stdout.strip() == "['night-1__00000']", listed.stderr
    assert "cannot be read; their shards are skipped" in listed.stderr and str(root / "night-2") in listed.stderr


@pytest.mark.parametrize(
    ("encoding", "how"),
    [("utf-8-sig", "Notepad's UTF-8 with BOM"), ("utf-16", "Notepad's Unicode (UTF-16 LE with BOM)")],
)
def test_shard_lists_saved_by_windows_editors_keep_their_first_shard(tmp_path, encoding, how):
    src = images(tmp_path / "src", "a.jpg", "b.jpg")
    for n in (0, 1):
        gnu_tar(tmp_path / "shards" / f"0000{n}.tar", src, "a.jpg", "b.jpg")
    listing = tmp_path / "tonight.txt"
    text = "shards/00000.tar\r\nshards/00001.tar\r\n"
    listing.write_bytes(text.encode(encoding))
    assert listing.read_bytes().startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE)), how
    manifest = score(str(listing), tmp_path / "out")
    assert manifest["shards"]["written"] == 2 and manifest["rows"] == 4, how


def test_characters_fsspec_reads_as_syntax_in_local_paths(tmp_path):
    """`::` (fsspec's chain of filesystems), `#`, `?`, `%` and `~` in local folder and shard names: each
    shard is read, none is a failed shard."""
    src = images(tmp_path / "src", "a.jpg", "b.jpg")
    root = tmp_path / "in::put"
    for rel in ("night::1.tar", "x#y?z.tar", "a::b/%41~1.tar"):
        gnu_tar(root / rel, src, "a.jpg", "b.jpg")
    out = tmp_path / "out::put"
    manifest = score(str(root), out)
    assert manifest["shards"] == {"total": 3, "skipped_done": 0, "written": 3, "failed": 0}
    assert manifest["rows"] == 6 and manifest["statuses"] == {"ok": 6}
    assert sorted(OutputLocation(str(out)).done()) == ["a::b__%41~1", "night::1", "x#y?z"]


def test_webdataset_skips_the_same_metadata_names_as_the_reader():
    """The metadata rule the reader shares with webdataset, on names straight from a tar stream."""
    from dpiqa.engine.stages.source import iter_samples

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in ("__key__", "__0001.jpg", "__meta__/x.jpg", "y/__meta__/z.jpg", "__a__.jpg"):
            corpus.add(t, name, corpus.jpeg(0, size=(8, 8)))
    data = buf.getvalue()
    got = [s.key for s in iter_samples(io.BytesIO(data))]
    files = [{**m, "__url__": "x"} for m in wds.tar_file_iterator(io.BytesIO(data))]
    assert got == [s["__key__"] for s in wds.group_by_keys(files)] == ["__0001", "y/__meta__/z", "__a__"]
