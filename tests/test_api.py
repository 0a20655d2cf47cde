"""The library API (`dpiqa.load_scorer`, `dpiqa.ray`): for every input type the scores, sizes, maps and statuses
that `dpiqa score` writes for the same images (read back from its Parquet output only), and bad input as the
documented error or status."""

from __future__ import annotations

import functools
import http.server
import io
import itertools
import threading
from pathlib import Path

import corpus
import numpy as np
import pyarrow.parquet as pq
import pytest
from clirun import dpiqa as cli
from PIL import Image, ImageOps

import dpiqa

# Scores of the same image agree to float32 rounding, not to the bit: a batch of other images (another batch
# size, or the CLI's batches, which follow the shard) moves the last bits of a model's matrix products.
TOLERANCE = 1e-5


def _exif_rotated_jpeg() -> bytes:
    img = Image.fromarray(np.random.default_rng(11).integers(0, 256, (36, 52, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 36 wide, 52 high
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def _demo_photographs() -> list[tuple[str, bytes]]:
    """The demo corpus's first three images of one photograph (the reference, Gaussian blur at levels 1 and 2)."""
    from dpiqa.engine import demo

    source, name, loader = next(p for p in demo.PHOTOGRAPHS if p[1] == "chelsea")
    samples = itertools.islice(demo.samples(source, name, demo.reference(loader)), 3)
    return [(f"photo{i}", members["png"]) for i, (_, members) in enumerate(samples)]


# name -> (extension, bytes): every mode the decoder converts, and two real photographs
GOOD = {
    "rgb": ("jpg", corpus.jpeg(1, size=(64, 48))),
    "rotated": ("jpg", _exif_rotated_jpeg()),
    "rgba": ("png", corpus.png("RGBA", 2)),
    "gray16": ("png", corpus.png("I;16", 3)),
    "palette": ("png", corpus.png("P", 4)),
    "gray": ("png", corpus.png("L", 5)),
    "cmyk": ("jpg", corpus.cmyk_jpeg(6)),
}
# name -> (extension, bytes, the status the README's table of bad input gives it)
BAD = {
    "cut": ("jpg", corpus.corrupt_jpeg(7), "decode_error"),
    "empty": ("jpg", b"", "empty_file"),
    "junk": ("jpg", b"<html>503 Service Unavailable</html>", "not_an_image"),
    "bomb": ("png", corpus.bomb_png(20000), "too_large"),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The images as files in a folder, and the same bytes as one WebDataset shard `shard/00000.tar`."""
    root = tmp_path_factory.mktemp("api")
    good = {**GOOD, **{name: ("png", data) for name, data in _demo_photographs()}}
    files = {name: (ext, data) for name, (ext, data) in good.items()}
    files.update({name: (ext, data) for name, (ext, data, _) in BAD.items()})
    (root / "files").mkdir()
    (root / "shard").mkdir()
    for name, (ext, data) in files.items():
        (root / "files" / f"{name}.{ext}").write_bytes(data)
    corpus.write_shard(root / "shard" / "00000.tar", [(name, {ext: data}) for name, (ext, data) in files.items()])
    return {name: root / "files" / f"{name}.{ext}" for name, (ext, _) in files.items()} | {"_root": root}


def score_rows(images: dict[str, Path], model: str, *extra: str) -> dict[str, dict]:
    """`dpiqa score` on the shard, its rows by key (and `map` from `--write-maps`)."""
    out = images["_root"] / f"out-{model}"
    result = cli("score", "--input", str(images["_root"] / "shard"), "--output", str(out), "--model", model,
                 "--executor", "local", *extra)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {r["key"]: r for r in pq.read_table(out / "scores" / "00000.parquet").to_pylist()}
    if (out / "maps").exists():
        for r in pq.read_table(out / "maps" / "00000.parquet").to_pylist():
            rows[r["key"]]["map"] = r["map"]
    return rows


@pytest.fixture(scope="module")
def demo_rows(images):
    return score_rows(images, "demo", "--write-maps")


@pytest.fixture(scope="module")
def brisque_rows(images):
    return score_rows(images, "brisque")


@functools.cache
def scorer(model: str) -> dpiqa.QualityScorer:
    return dpiqa.load_scorer(model, device="cpu")


@pytest.fixture(scope="module")
def server(images):
    """The image folder over HTTP on loopback: images by URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(images["_root"] / "files"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def as_array(path: Path) -> np.ndarray:
    """The array a user holds for an image: RGBA, 16-bit and grey kept as they are (the scorer composites, scales
    and expands them), the others as displayed RGB (PIL's conversion of palette and CMYK, orientation applied)."""
    img = Image.open(path)
    if img.mode in ("RGBA", "I;16", "L"):
        return np.asarray(img)
    return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


INPUTS = {
    "str": lambda p, url: str(p),
    "Path": lambda p, url: p,
    "URL": lambda p, url: f"{url}/{p.name}",
    "bytes": lambda p, url: p.read_bytes(),
    "PIL": lambda p, url: Image.open(p),
    "array": lambda p, url: as_array(p),
}


@pytest.mark.parametrize("model", ["demo", "brisque"])
@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_input_type_scores_as_dpiqa_score(images, server, request, model, kind):
    rows = request.getfixturevalue(f"{model}_rows")
    names = [n for n in images if n != "_root" and n not in BAD]
    if model == "brisque":  # ~0.1 s an image at 512 x 512 on this machine's CPU: the modes that matter most
        names = ["rotated", "rgba", "gray16", "photo0", "photo2"]
    expected = np.array([rows[n]["score"] for n in names], dtype=np.float32)
    assert all(rows[n]["status"] == "ok" for n in names) and np.isfinite(expected).all()
    inputs = [INPUTS[kind](images[n], server) for n in names]

    batched = scorer(model)(inputs)  # one list: batched
    assert isinstance(batched, np.ndarray) and batched.dtype == np.float32 and batched.shape == (len(names),)
    np.testing.assert_allclose(batched, expected, rtol=0, atol=TOLERANCE * float(np.abs(expected).max()))
    one = scorer(model)(INPUTS[kind](images["photo1"], server))  # one image: a float
    assert isinstance(one, float)
    assert one == pytest.approx(rows["photo1"]["score"], abs=TOLERANCE * abs(rows["photo1"]["score"]))


def test_sizes_maps_and_a_batch_array_as_dpiqa_score(images, demo_rows):
    names = [n for n in images if n != "_root" and n not in BAD]
    out = scorer("demo").score([images[n] for n in names], return_map=True)
    assert list(out.status) == ["ok"] * len(names) and list(out.error) == [None] * len(names)
    assert [(w, h) for w, h in zip(out.width, out.height, strict=True)] == [
        (demo_rows[n]["width"], demo_rows[n]["height"]) for n in names
    ]
    assert (out.width[names.index("rotated")], out.height[names.index("rotated")]) == (36, 52)  # as displayed
    assert out.map.shape == (len(names), 64, 8, 8) and out.map.dtype == np.float16
    for i, n in enumerate(names):
        expected = np.frombuffer(demo_rows[n]["map"], np.float16).reshape(64, 8, 8).astype(np.float32)
        np.testing.assert_allclose(out.map[i].astype(np.float32), expected, atol=2e-3 * np.abs(expected).max())
    # a (B, H, W, 3) uint8 array is a batch of B images
    photos = np.stack([as_array(images[f"photo{i}"]) for i in range(3)])
    np.testing.assert_allclose(
        scorer("demo")(photos), [demo_rows[f"photo{i}"]["score"] for i in range(3)], rtol=TOLERANCE
    )


def test_bad_images_get_dpiqa_scores_statuses(images, demo_rows):
    names = ["photo0", *BAD, "rgb"]
    out = scorer("demo").score([images[n] for n in names] + [None], errors="status")
    assert list(out.status) == ["ok", *(status for _, _, status in BAD.values()), "ok", "no_image"]
    assert list(out.status[:-1]) == [demo_rows[n]["status"] for n in names]
    for i, n in enumerate(names[1:-1], start=1):
        # the same message as the row's, naming the file where the row names the member
        assert out.error[i] == f"{images[n]}: {demo_rows[n]['error'].split(': ', 1)[1]}"
        assert np.isnan(out.score[i]) and not out.ok[i]
    assert out.error[-1] == f"image {len(names)}: no image (None)"
    assert (out.width[4], out.height[4]) == (20000, 20000)  # the bomb's size, from its header
    np.testing.assert_allclose(out.score[[0, -2]], [demo_rows["photo0"]["score"], demo_rows["rgb"]["score"]], rtol=1e-5)


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_image_raises_one_error_naming_it(images, name):
    paths = [images["rgb"], images[name]]
    with pytest.raises(dpiqa.ImageError) as info:
        scorer("demo")(paths)
    assert info.value.status == BAD[name][2] and info.value.index == 1
    assert str(info.value).startswith(f"{images[name]}: ") and "\n" not in str(info.value)
    with pytest.raises(dpiqa.ImageError, match=r"^image 0: "):  # bytes have no name: their position
        scorer("demo")(images[name].read_bytes())
    assert isinstance(info.value, ValueError)


def test_what_is_no_image_at_all_raises(images, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):  # even with errors="status": no image's fault
        scorer("demo").score([images["rgb"], tmp_path / "missing.jpg"], errors="status")
    with pytest.raises(TypeError, match="image 1: a int is no image"):
        scorer("demo")([images["rgb"], 3])
    with pytest.raises(dpiqa.ImageError, match="an array of float32") as info:
        scorer("demo")(np.zeros((8, 8, 3), np.float32))
    assert info.value.status == "not_an_image"
    with pytest.raises(ValueError, match="errors must be 'raise' or 'status'"):
        scorer("demo").score(images["rgb"], errors="ignore")
    with pytest.raises(ValueError, match="brisque has no quality map"):
        scorer("brisque").score(images["rgb"], return_map=True)
    empty = scorer("demo").score([])
    assert len(empty) == 0 and scorer("demo")([]).shape == (0,)


def test_the_ray_transform_on_read_webdataset_scores_as_dpiqa_score(ray_local, tmp_path):
    """`read_webdataset` of the project's test shards (img2dataset's real output, and a shard with bad members)
    through `map_batches(dpiqa.ray.Scorer)`: the scores, statuses and errors `dpiqa score` writes."""
    import shutil

    import ray.data

    import dpiqa.ray

    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("00000.tar", "00001.tar"):
        shutil.copy(Path(__file__).parent / "fixtures" / "img2dataset" / name, shards / name)
    bad = [(f"bad{i}", {"jpg": data, "txt": b"x"}) for i, (_, data, _) in enumerate(BAD.values())]
    corpus.write_shard(shards / "00002.tar", corpus.good_samples("g", 3) + bad)
    out = tmp_path / "out"
    result = cli("score", "--input", str(shards), "--output", str(out), "--model", "demo", "--executor", "local")
    assert result.returncode == 0, result.stderr
    expected = {(Path(r["shard"]).name, r["key"]): r for r in pq.read_table(out / "scores").to_pylist()}

    ds = ray.data.read_webdataset(str(shards), decoder=None).map_batches(
        dpiqa.ray.Scorer, fn_constructor_kwargs={"model": "demo", "column": "jpg"}, batch_size=8, concurrency=1
    )
    got = {(Path(r["__url__"]).name, r["__key__"]): r for r in ds.take_all()}
    assert got.keys() == expected.keys() and len(got) == 4 + 2 + 3 + len(BAD)
    for k, row in got.items():
        assert (row["status"], row["error"]) == (expected[k]["status"], expected[k]["error"]), k
        assert isinstance(row["txt"], bytes)  # the other columns pass through
        if row["status"] == "ok":
            assert row["score"] == pytest.approx(expected[k]["score"], abs=TOLERANCE * 5)
        else:
            assert np.isnan(row["score"])
    assert sorted(r["status"] for r in got.values() if r["status"] != "ok") == sorted(s for _, _, s in BAD.values())


def test_the_ray_transform_in_this_process(images):
    """The class itself, as a Ray actor calls it: a numpy batch or a pandas one; a missing column or a clash
    with the columns it adds stops with a message (a `prefix` avoids the clash)."""
    import pandas as pd

    import dpiqa.ray

    transform = dpiqa.ray.Scorer(model="brisque", column="picture")
    images_col = np.empty(3, dtype=object)  # a column of bytes and arrays, as Ray hands a mixed column over
    for i, value in enumerate([images["rgb"].read_bytes(), None, np.asarray(Image.open(images["gray"]))]):
        images_col[i] = value
    batch = {"picture": images_col, "id": np.arange(3)}
    out = transform(batch)
    assert set(batch) == {"picture", "id"}  # the caller's batch is left as it was
    assert list(out["status"]) == ["ok", "no_image", "ok"] and list(out["id"]) == [0, 1, 2]
    assert out["error"][1] == "picture: no image (None)"  # the column, as a row names the member
    np.testing.assert_allclose(out["score"][[0, 2]], scorer("brisque")([images["rgb"], images["gray"]]), rtol=1e-6)
    frame = transform(pd.DataFrame(batch))
    assert list(frame.columns) == ["picture", "id", "score", "status", "error"]
    np.testing.assert_allclose(frame["score"].to_numpy(), out["score"])
    with pytest.raises(ValueError, match=r"no column 'picture' in the batch \(columns: \['jpg'\]\)"):
        transform({"jpg": images_col})
    with pytest.raises(ValueError, match=r"already has column\(s\) \['score'\]; pass prefix="):
        transform({**batch, "score": np.zeros(3)})
    prefixed = dpiqa.ray.Scorer(model="brisque", column="picture", prefix="q_")({**batch, "score": np.zeros(3)})
    assert {"score", "q_score", "q_status", "q_error"} <= set(prefixed)
    with pytest.raises(ValueError, match=r"column 'picture' holds text \(paths or URLs\?\), not images"):
        transform({"picture": np.array([str(images["rgb"])])})


def test_a_score_the_model_cannot_give_is_a_score_error():
    """BRISQUE is undefined on a flat image (no local contrast): the README's `score_error` row, or its error."""
    flat = np.full((64, 64, 3), 128, np.uint8)
    out = scorer("brisque").score([flat, flat.copy()], errors="status")
    assert list(out.status) == ["score_error"] * 2 and np.isnan(out.score).all()
    with pytest.raises(dpiqa.ImageError, match="image 0: the model returned a non-finite score") as info:
        scorer("brisque")(flat)
    assert info.value.status == "score_error"
