"""Row names of `dpiqa eval`'s cross-dataset table: two checkpoints with the same folder name stay two rows."""

from __future__ import annotations

from dpiqa.jobs.eval import model_labels


def test_models_with_the_same_folder_name_get_distinct_labels():
    names = ["runs/report/teacher/split-0", "runs/report/student/split-0", "demo", "s3://bucket/ckpt/v1/"]
    assert model_labels(names) == {
        "runs/report/teacher/split-0": "teacher/split-0",
        "runs/report/student/split-0": "student/split-0",
        "demo": "demo",
        "s3://bucket/ckpt/v1/": "v1",
    }
