"""The report of a folder job on gs:// (a fake GCS server): written in parts, each object
uploaded once and never again, read back whole by ``read_report``, resumed and started anew."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from preprocessing import report as report_module
from preprocessing.report import Report, ReportWriter, last_records, read_report


def generations(server, folder) -> dict[str, str]:
    """Every object under ``folder`` (a gs:// epath) and its generation, from the server."""
    bucket, _, prefix = str(folder).removeprefix("gs://").partition("/")
    query = urllib.parse.urlencode({"prefix": prefix + "/"})
    url = f"{server.url}/storage/v1/b/{bucket}/o?{query}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as r:
        items = json.loads(r.read()).get("items", [])
    return {i["name"].removeprefix(prefix + "/"): i["generation"] for i in items}


def test_gcs_report_in_parts_each_written_once(gcs_server, gcs_bucket, monkeypatch):
    monkeypatch.setattr(report_module, "UPLOAD_EVERY_S", 0.0)  # a part per line
    seen: dict[str, str] = {}
    with Report(gcs_bucket) as report:
        for i in range(3):
            report.done(f"p{i}.png", f"/in/p{i}.png", [f"p{i}.png"])
            now = generations(gcs_server, gcs_bucket)
            assert {k: now[k] for k in seen} == seen  # no part written again
            assert len(now) == i + 1 and all(k.startswith("report.jsonl.parts/") for k in now)
            seen = now
    # a second writer appends parts of its own, as a Beam bundle does; a resumed run reads all
    monkeypatch.setattr(report_module, "UPLOAD_EVERY_S", 3600.0)  # one part, at close
    with ReportWriter(gcs_bucket) as other:
        other.failed("bad.png", "/in/bad.png", "not an image")
        assert generations(gcs_server, gcs_bucket) == seen  # nothing until close
    now = generations(gcs_server, gcs_bucket)
    assert {k: now[k] for k in seen} == seen and len(now) == 4
    lines = read_report(gcs_bucket).splitlines()
    assert [json.loads(x)["name"] for x in lines] == ["p0.png", "p1.png", "p2.png", "bad.png"]
    resumed = Report(gcs_bucket)
    assert resumed.previous == last_records("\n".join(lines))
    assert resumed.previous["bad.png"]["reason"] == "not an image"
    resumed.close()
    assert generations(gcs_server, gcs_bucket) == now  # a run with no new line writes nothing

    with Report(gcs_bucket, resume=False) as fresh:  # --overwrite: the old parts removed
        assert generations(gcs_server, gcs_bucket) == {}
        fresh.done("p0.png", "/in/p0.png", ["p0.png"])
    assert list(last_records(read_report(gcs_bucket))) == ["p0.png"]


@pytest.mark.parametrize("cut", [True, False])
def test_local_report_appends_after_a_line_cut_short(tmp_path, cut):
    (tmp_path / "report.jsonl").write_text('{"name": "a"}\n{"name": "b", "sta' if cut else "")
    with ReportWriter(tmp_path) as writer:
        writer.done("c", "/in/c", ["c.png"])
    lines = (tmp_path / "report.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["name"] == "c"
    assert list(last_records(read_report(tmp_path))) == (["a", "c"] if cut else ["c"])
