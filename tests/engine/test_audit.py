"""The audit: statistics against a direct computation, streaming invariance, drift, thumbnails, s3, and
the HTML page opened in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats
from corpus import good_samples, jpeg, write_shard
from PIL import Image
from scored import score_shards

from dpiqa.engine import schema
from dpiqa.engine.audit import AuditConfig, run_audit
from dpiqa.engine.audit.drift import ks, psi
from dpiqa.engine.audit.stats import Grid
from dpiqa.engine.output import OutputLocation

PER_SHARD = 10


def base_score(url: str, index: int, key: str) -> float | None:
    """A deterministic score per key (about N(3, 1)); every 7th sample of shard b/00001 fails to score."""
    if url.endswith("b/00001.tar") and index % 7 == 3:
        return None
    return float(np.random.default_rng(zlib.crc32(key.encode())).normal(3.0, 1.0))


def build_corpus(root: Path) -> list[str]:
    """Four shards in two folders (sources `a`, `b`); shard a/00000 has a sample with no image."""
    urls = []
    for s, folder in enumerate(["a", "a", "b", "b"]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        samples = good_samples(f"{folder}{s}_", PER_SHARD, seed=s)
        if s == 0:
            samples.insert(4, (f"{folder}{s}_noimage", {"txt": b"only a caption"}))
        path = root / folder / f"{s % 2:05d}.tar"
        write_shard(path, samples)
        urls.append(str(path))
    return urls


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    root = tmp_path_factory.mktemp("audit")
    urls = build_corpus(root / "shards")
    out = str(root / "scores")
    score_shards(urls, out, base_score)
    return urls, out


def all_rows(out: str) -> pa.Table:
    return pq.read_table(f"{out}/scores")


def test_statistics_match_a_direct_computation(scored: tuple[list[str], str], tmp_path: Path) -> None:
    urls, out = scored
    doc = run_audit(AuditConfig(scores=out, thumbnails=3, json=str(tmp_path / "a.json"))).doc
    table = all_rows(out).to_pandas()
    ok = table[table.status == "ok"]
    s = np.sort(ok.score.to_numpy(np.float64))

    assert doc["summary"]["rows"] == len(table) == 4 * PER_SHARD + 1
    assert doc["summary"]["ok"] == len(ok)
    assert {d["status"]: d["count"] for d in doc["statuses"]} == table.status.value_counts().to_dict()
    assert doc["summary"]["error_rate"] == pytest.approx((len(table) - len(ok)) / len(table))
    assert doc["summary"]["min"] == s[0] and doc["summary"]["max"] == s[-1]
    assert doc["summary"]["mean"] == pytest.approx(s.mean(), rel=1e-12)
    assert doc["summary"]["std"] == pytest.approx(s.std(), rel=1e-9)
    width = (doc["histogram"]["hi"] - doc["histogram"]["lo"]) / doc["histogram"]["bins"]
    for name, value in doc["quantiles"].items():
        q = int(name[1:]) / 100
        rank = max(math.ceil(q * len(s)), 1)  # the order statistic a histogram quantile lands next to
        assert abs(value - s[rank - 1]) <= width + 1e-12, name
    assert sum(doc["histogram"]["counts"]) == len(ok)
    assert sum(doc["figures"]["histogram"]["counts"]) == len(ok)

    by_shard = {d["name"]: d for d in doc["per_shard"]}
    assert set(by_shard) == {"a__00000", "a__00001", "b__00000", "b__00001"}
    for url, g in table.groupby("shard"):
        name = f"{Path(url).parent.name}__{Path(url).stem}"
        okg = g[g.status == "ok"].score.to_numpy(np.float64)
        assert by_shard[name]["rows"] == len(g)
        assert by_shard[name]["error_rate"] == pytest.approx(1 - len(okg) / len(g))
        assert by_shard[name]["mean"] == pytest.approx(okg.mean(), rel=1e-12)
        assert by_shard[name]["min"] == okg.min()
    by_source = {d["source"]: d for d in doc["per_source"]}
    table["source"] = [str(Path(u).parent) for u in table.shard]
    assert set(by_source) == set(table.source)
    for src, g in table.groupby("source"):
        assert by_source[src]["rows"] == len(g)
        assert by_source[src]["statuses"] == g.status.value_counts().to_dict()

    ok = ok.assign(name=[f"{Path(u).parent.name}__{Path(u).stem}" for u in ok.shard])
    lowest = ok.sort_values(["score", "name", "index"]).key.tolist()[:3]
    highest = ok.assign(neg=-ok.score).sort_values(["neg", "name", "index"]).key.tolist()[:3]
    assert [t["key"] for t in doc["thumbnails"]["lowest"]] == lowest
    assert [t["key"] for t in doc["thumbnails"]["highest"]] == highest
    assert json.loads((tmp_path / "a.json").read_text())["summary"] == doc["summary"]


def test_thumbnails_are_the_scored_images(scored: tuple[list[str], str]) -> None:
    urls, out = scored
    result = run_audit(AuditConfig(scores=out, thumbnails=2))
    for t in result.doc["thumbnails"]["lowest"] + result.doc["thumbnails"]["highest"]:
        assert t["error"] is None
        i = int(t["key"].split("_")[1])
        assert t["index"] == i + (1 if t["url"].endswith("a/00000.tar") and i >= 4 else 0)


def test_thumbnail_images_match_the_originals(scored: tuple[list[str], str], tmp_path: Path) -> None:
    """The page's thumbnails are the images at those keys (sizes of the originals, pixels close)."""
    urls, out = scored
    from dpiqa.engine.audit.thumbnails import read_thumbnails

    key = "a0_0003"
    thumbs = read_thumbnails([(urls[0], 3, key), (urls[0], 5, "a0_0004")])
    uri = thumbs[(urls[0], 3)].data_uri
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    original = Image.open(io.BytesIO(good_samples("a0_", PER_SHARD, seed=0)[3][1]["jpg"])).convert("RGB")
    assert img.size == original.size
    diff = np.abs(np.asarray(img, np.int16) - np.asarray(original, np.int16)).mean()
    assert diff < 40  # a re-encoded noise image: close to the original, far from another one (~85)
    assert thumbs[(urls[0], 5)].data_uri is not None  # index 5 is a0_0004: the no-image sample sits at 4


def test_streaming_in_small_batches_gives_the_same_document(scored: tuple[list[str], str]) -> None:
    _, out = scored
    small = run_audit(AuditConfig(scores=out, thumbnails=4, batch_size=3)).doc
    large = run_audit(AuditConfig(scores=out, thumbnails=4)).doc
    for doc in (small, large):
        doc.pop("generated")
    assert_same(small, large)


def test_a_scan_split_among_ray_tasks_gives_the_same_document(
    scored: tuple[list[str], str], ray_local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The distributed audit (statistics per group of files on Ray tasks, merged) equals the one-process
    audit: counts, histogram, quantiles, extremes, per-shard and per-source figures."""
    from dpiqa.engine.audit import scan as audit_scan

    _, out = scored
    monkeypatch.setattr(audit_scan, "ROWS_PER_TASK", 5)  # one task per shard or two: several parts
    split = run_audit(AuditConfig(scores=out, thumbnails=4, executor="ray")).doc
    whole = run_audit(AuditConfig(scores=out, thumbnails=4, executor="local")).doc
    for doc in (split, whole):
        doc.pop("generated")
    assert_same(split, whole)


def assert_same(a, b, where: str = "") -> None:  # JSON values
    """Equal JSON documents, floats up to summation order (sums of batches in another grouping)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}.{i}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), where
    else:
        assert a == b, where


def test_only_completed_shards_are_read(scored: tuple[list[str], str], tmp_path: Path) -> None:
    _, out = scored
    copy = tmp_path / "scores"
    shutil.copytree(out, copy)
    (copy / "_done" / "b__00000.json").unlink()  # as if that shard were still being written
    doc = run_audit(AuditConfig(scores=str(copy), thumbnails=0)).doc
    full = all_rows(out).to_pandas()
    assert doc["summary"]["rows"] == int((~full.shard.str.endswith("b/00000.tar")).sum())
    assert "b__00000" not in {d["name"] for d in doc["per_shard"]}


def test_no_completed_shard_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no completed shard"):
        run_audit(AuditConfig(scores=str(tmp_path)))


def test_source_column_is_used_when_present(tmp_path: Path) -> None:
    out = OutputLocation(str(tmp_path / "scores"))
    rows = [
        ("k0", 0, 1.0, "ok", "web"),
        ("k1", 1, 2.0, "ok", "catalog"),
        ("k2", 2, None, "decode_error", "web"),
        ("k3", 3, 4.0, "ok", "web"),
    ]
    keys, index, score, status, source = (list(c) for c in zip(*rows, strict=True))
    table = pa.table(
        {
            "key": keys,
            "shard": ["s3://b/x/0.tar"] * 4,
            "index": pa.array(index, pa.int64()),
            "score": pa.array(score, pa.float32()),
            "model": ["m"] * 4,
            "width": pa.array([1] * 4, pa.int32()),
            "height": pa.array([1] * 4, pa.int32()),
            "status": status,
            "error": [None] * 4,
            "source": source,
        }
    )
    out.write_table("scores", "0", table)
    out.write_marker("0", {"shard": "s3://b/x/0.tar", "rows": 4})
    doc = run_audit(AuditConfig(scores=out.url, thumbnails=0)).doc
    by_source = {d["source"]: d for d in doc["per_source"]}
    assert by_source["web"]["rows"] == 3 and by_source["web"]["ok"] == 2
    assert by_source["web"]["mean"] == pytest.approx(2.5)
    assert by_source["web"]["statuses"] == {"ok": 2, "decode_error": 1}
    assert by_source["catalog"]["rows"] == 1 and by_source["catalog"]["mean"] == 2.0


def test_psi_bins_and_value_by_hand() -> None:
    base = np.full(10, 10)  # uniform over 10 fine bins: the deciles cut after every bin
    cur = np.array([20, 0, 10, 10, 10, 10, 10, 10, 10, 10])
    value, bins = psi(cur, base)
    assert len(bins) == 10
    p = np.array([0.2, 1e-4] + [0.1] * 8)
    q = np.full(10, 0.1)
    assert value == pytest.approx(float(((p - q) * np.log(p / q)).sum()))
    assert psi(base, base)[0] == 0.0
    # Mass that moves outside the baseline's range lands in its own bin, not in an edge decile.
    base2 = np.zeros(20, int)
    base2[5:15] = 10
    cur2 = base2.copy()
    cur2[5], cur2[0] = 0, 10
    value2, bins2 = psi(cur2, base2)
    assert bins2[0]["start_bin"] == 0 and bins2[0]["end_bin"] == 5 and bins2[0]["current"] == pytest.approx(0.1)
    assert value2 > 0.5


def test_ks_matches_scipy_on_binned_data() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 50, 300), rng.integers(5, 55, 200)
    d, p_value, _ = ks(np.bincount(a, minlength=60), np.bincount(b, minlength=60))
    ref = scipy.stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p_value == pytest.approx(ref.pvalue, rel=0.05)


def test_grid_counts_every_value() -> None:
    grid = Grid.around(1.0, 1.0, 64)  # all scores equal: the range is widened, not empty
    assert grid.lo < 1.0 < grid.hi
    assert grid.histogram(np.array([1.0, 1.0])).sum() == 2


def test_identical_runs_show_no_drift(scored: tuple[list[str], str]) -> None:
    _, out = scored
    result = run_audit(AuditConfig(scores=out, baseline=out, thumbnails=0, max_drift=0.1))
    assert result.doc["drift"]["psi"] == 0.0
    assert result.doc["drift"]["ks_statistic"] == 0.0
    assert result.alerts == [] and result.exit_code == 0


def test_shifted_baseline_crosses_the_drift_threshold(scored: tuple[list[str], str], tmp_path: Path) -> None:
    urls, out = scored
    base = str(tmp_path / "baseline")
    score_shards(urls, base, lambda u, i, k: None if base_score(u, i, k) is None else base_score(u, i, k) + 1.0)
    result = run_audit(AuditConfig(scores=out, baseline=base, thumbnails=0, max_drift=0.25))
    assert result.doc["drift"]["psi"] > 0.25
    assert result.doc["drift"]["ks_statistic"] > 0.3
    assert result.exit_code == 3
    assert len(result.alerts) == 1 and "PSI" in result.alerts[0]
    # The same shift under a looser threshold passes.
    assert run_audit(AuditConfig(scores=out, baseline=base, thumbnails=0, max_drift=100.0)).exit_code == 0


def test_error_rate_threshold(scored: tuple[list[str], str]) -> None:
    _, out = scored
    rate = run_audit(AuditConfig(scores=out, thumbnails=0)).doc["summary"]["error_rate"]
    assert rate > 0
    high = run_audit(AuditConfig(scores=out, thumbnails=0, max_error_rate=rate / 2))
    assert high.exit_code == 3 and "error rate" in high.alerts[0]
    assert run_audit(AuditConfig(scores=out, thumbnails=0, max_error_rate=rate)).exit_code == 0


def test_unreadable_shard_costs_only_its_thumbnails(tmp_path: Path) -> None:
    urls = build_corpus(tmp_path / "shards")
    out = str(tmp_path / "scores")
    score_shards(urls, out, base_score)
    Path(urls[0]).unlink()
    doc = run_audit(AuditConfig(scores=out, thumbnails=40)).doc  # every ok row is a thumbnail
    errors = [t for t in doc["thumbnails"]["lowest"] if t["error"]]
    assert errors and all(t["url"] == urls[0] and "cannot read shard" in t["error"] for t in errors)
    assert len(errors) == PER_SHARD


def test_s3_scores_baseline_and_outputs(s3: tuple[str, dict], tmp_path: Path) -> None:
    import s3fs

    bucket, options = s3
    fs = s3fs.S3FileSystem(**options)
    local = build_corpus(tmp_path / "shards")
    urls = []
    for path in local:
        url = f"s3://{bucket}/shards/{Path(path).parent.name}/{Path(path).name}"
        fs.put(path, url)
        urls.append(url)
    score_shards(urls, f"s3://{bucket}/run1", base_score, storage_options=options)
    score_shards(urls, f"s3://{bucket}/run0", base_score, storage_options=options)
    result = run_audit(
        AuditConfig(
            scores=f"s3://{bucket}/run1",
            baseline=f"s3://{bucket}/run0",
            report=f"s3://{bucket}/audit/report.html",
            json=f"s3://{bucket}/audit/audit.json",
            thumbnails=2,
            storage_options=options,
        )
    )
    doc = json.loads(fs.cat(f"{bucket}/audit/audit.json"))
    assert doc["summary"]["rows"] == 4 * PER_SHARD + 1 == result.doc["summary"]["rows"]
    assert doc["drift"]["psi"] == 0.0
    assert all(t["error"] is None and t["url"].startswith("s3://") for t in doc["thumbnails"]["lowest"])
    page = fs.cat(f"{bucket}/audit/report.html").decode()
    assert page.count("data:image/jpeg;base64,") == 4


# -- the page in a real browser -------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> tuple[str, str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    for missing, what in ((binary is None, "no chromium binary"), (driver is None, "no chromedriver")):
        if missing:
            if os.environ.get("CI"):  # .ci/run installs them: on CI a missing browser is a failure, not a skip
                pytest.fail(f"{what} on CI (apt-get install chromium chromium-driver)")
            pytest.skip(f"{what} (Debian: apt-get install chromium chromium-driver)")
    return binary, driver


def parse_number(text: str) -> float:
    text = text.strip().replace(",", "")
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def json_at(doc: dict, path: str):  # any JSON value
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def test_report_renders_in_chromium(scored: tuple[list[str], str], tmp_path: Path) -> None:
    binary, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    urls, out = scored
    base = str(tmp_path / "baseline")
    score_shards(urls, base, lambda u, i, k: None if base_score(u, i, k) is None else base_score(u, i, k) + 0.3)
    report, doc_path = tmp_path / "report.html", tmp_path / "audit.json"
    run_audit(
        AuditConfig(scores=out, baseline=base, report=str(report), json=str(doc_path), thumbnails=3, max_error_rate=0.0)
    )
    doc = json.loads(doc_path.read_text())

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        browser.get(report.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => ({id: i.id, cls: i.className, src: i.src.slice(0, 22),"
            " w: i.naturalWidth, h: i.naturalHeight, done: i.complete}))"
        )
        numbers = browser.execute_script(
            "return Array.from(document.querySelectorAll('[data-json]')).map(e => [e.dataset.json, e.textContent])"
        )
        resources = browser.execute_script("return performance.getEntriesByType('resource').length")
        alerts = browser.execute_script("return document.getElementById('alerts').textContent")
    finally:
        browser.quit()

    plots = {i["id"] for i in images if i["cls"] == "plot"}
    assert plots == {"plot-histogram", "plot-cdf", "plot-statuses", "plot-psi", "plot-per-source", "plot-per-shard"}
    thumbs = [i for i in images if i["cls"] != "plot"]
    assert len(thumbs) == 6
    for img in images:
        assert img["done"] and img["w"] > 0 and img["h"] > 0, img
        assert img["src"].startswith(("data:image/png;base64", "data:image/jpeg;base6")), img
    assert resources == 0  # nothing fetched: the page is self-contained

    checked = set()
    for path, text in numbers:
        value = json_at(doc, path)
        if value is None:
            assert text == "n/a", path
            continue
        shown = parse_number(text)
        tol = 5e-5 if text.strip().endswith("%") else abs(value) * 5e-6 + 1e-12
        assert shown == pytest.approx(value, abs=tol), (path, text, value)
        checked.add(path.split(".")[0])
    assert {
        "summary",
        "quantiles",
        "statuses",
        "drift",
        "baseline",
        "per_shard",
        "per_source",
        "thumbnails",
        "shards",
    } <= checked
    assert "error rate" in alerts  # --max-error-rate 0 with failures: the banner shows the alert


def test_score_with_every_status_is_counted(tmp_path: Path) -> None:
    """Bad samples the reader reports (no image, duplicate key) are counted under their own status."""
    path = tmp_path / "x.tar"
    write_shard(path, [("k1", {"jpg": jpeg(1)}), ("k2", {"txt": b"caption only"}), ("k1", {"jpg": jpeg(2)})])
    out = str(tmp_path / "scores")
    score_shards([str(path)], out, lambda u, i, k: 2.0)
    doc = run_audit(AuditConfig(scores=out, thumbnails=1)).doc
    assert {d["status"]: d["count"] for d in doc["statuses"]} == {
        schema.OK: 1,
        schema.NO_IMAGE: 1,
        schema.DUPLICATE_KEY: 1,
    }
    assert doc["summary"]["error_rate"] == pytest.approx(2 / 3)
    assert doc["thumbnails"]["lowest"][0]["key"] == "k1"


def test_run_without_ok_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    write_shard(path, [("k1", {"txt": b"no image"}), ("k2", {"jpg": jpeg(1)})])
    out = str(tmp_path / "scores")
    score_shards([str(path)], out, lambda u, i, k: None)
    result = run_audit(
        AuditConfig(
            scores=out, baseline=out, report=str(tmp_path / "r.html"), json=str(tmp_path / "a.json"), max_error_rate=0.5
        )
    )
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["summary"]["ok"] == 0 and doc["summary"]["error_rate"] == 1.0
    assert doc["quantiles"] == {} and doc["drift"] is None and doc["thumbnails"]["lowest"] == []
    assert result.exit_code == 3
    assert (tmp_path / "r.html").read_text().count("data:image/png;base64,") == 5


def test_axes_as_a_person_sees_them_in_chromium(scored: tuple[list[str], str], tmp_path: Path) -> None:
    """The page in a real browser: the log axis of "Rows by status" reads as counts (1, 10, 100), not as raw
    mathtext (`$\\mathdefault{10^{0}}$`), and the per-shard plot counts shards in whole numbers."""
    binary, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    urls, out = scored
    report = tmp_path / "report.html"
    run_audit(AuditConfig(scores=out, report=str(report), thumbnails=0))
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        browser.get(report.as_uri())
        ticks = browser.execute_script(
            "const t = id => { const i = document.getElementById(id);"
            " return {shown: i.complete && i.naturalWidth > 0, axes: JSON.parse(i.dataset.ticks)}; };"
            "return {statuses: t('plot-statuses'), shards: t('plot-per-shard')}"
        )
    finally:
        browser.quit()
    statuses, shards = ticks["statuses"], ticks["shards"]
    assert statuses["shown"] and shards["shown"]
    counts = statuses["axes"][0]["x"]
    assert counts, statuses
    for label in counts:
        assert "$" not in label and "mathdefault" not in label, counts
        assert float(label.replace(",", "")) == int(label.replace(",", "")), counts
    assert {"1", "10"} <= set(counts)  # the decades a handful of error rows and a few dozen ok rows span
    shard_axis = shards["axes"][1]["x"]  # the lower of the two plots carries the shared shard axis
    assert shard_axis and all(label.lstrip("−-").isdigit() for label in shard_axis), shard_axis
    assert len(urls) == 4 and {"0", "1", "2", "3"} <= set(shard_axis)
