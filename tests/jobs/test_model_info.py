"""`dpiqa model-info`: counts and FLOPs of named configurations (meta device) and of checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from expected import content_sha256

from dpiqa import models
from dpiqa.jobs.cli import main


def run_json(capsys: pytest.CaptureFixture, name: str) -> dict:
    assert main(["model-info", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def teacher_info() -> dict:
    from dpiqa.models.info import model_info

    return model_info("dpiqa-teacher")


def test_teacher_counts_and_flops_against_the_spec(teacher_info: dict) -> None:
    params = teacher_info["parameters"]
    assert params["unet"] == 859_520_964 and params["image_adapter"] == 77_369_280
    assert params["text_adapter"] == 1_181_184 + 768
    assert params["decoder"] + params["head"] == 42_937_417  # hand count in tests/models/test_teacher.py
    assert (
        sum(params[p] for p in ("vae_encoder", "unet", "image_adapter", "text_adapter", "decoder", "head"))
        == (params["total"])
    )
    assert params["frozen"] == params["vae_encoder"] + 12_164  # + the U-Net's unused noise-prediction output
    assert teacher_info["input_size"] == [512, 512] and teacher_info["map_shape"] == [8, 64, 64]
    assert teacher_info["buffers"] == 1485 * 768  # the prompt embeddings

    # Spec, "Cost": VAE encoder 1.12, U-Net with 1485 tokens 0.92, decoder 0.21, image adapter 0.06,
    # total 2.31 TFLOP per 512x512 image.
    tflop = {k: v / 1e12 for k, v in teacher_info["flops"].items()}
    assert round(tflop["vae_encoder"], 2) == 1.12 and round(tflop["unet"], 2) == 0.92
    assert round(tflop["decoder"], 2) == 0.21 and round(tflop["image_adapter"], 2) == 0.06
    assert round(tflop["total"], 2) == 2.31

    # With the prompt keys/values cached, each cross-attention layer skips to_k and to_v on 1485 x 768:
    # 2 projections x 2 FLOPs x 1485 x 768 x its width, over SD's 16 cross-attention layers.
    widths = [320] * 2 + [640] * 2 + [1280] * 2 + [1280] + [1280] * 3 + [640] * 3 + [320] * 3
    saved = sum(2 * 2 * 1485 * 768 * w for w in widths)
    cached = teacher_info["flops_inference"]
    assert teacher_info["flops"]["unet"] - cached["unet"] == saved
    assert cached["text_adapter"] == 0
    assert teacher_info["flops"]["text_adapter"] == 2 * 2 * 1485 * 768 * 768  # two 768x768 linears


def test_student_counts_and_flops(capsys: pytest.CaptureFixture) -> None:
    info = run_json(capsys, "dpiqa-student")
    assert info["architecture"] == "dpiqa-student"
    assert info["parameters"]["backbone"] == 63_786_960
    assert info["parameters"]["head"] == (2560 * 8 * 9 + 8) + 17_040_897
    assert round(info["flops"]["total"] / 1e9) == 54  # spec: "student about 54 GFLOP"
    assert info["flops"]["backbone"] + info["flops"]["head"] == info["flops"]["total"]
    assert "flops_inference" not in info


def test_checkpoint_info_reads_config_and_card(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    card = models.build("dpiqa-student-tiny").save_pretrained(str(tmp_path / "ckpt"))
    info = run_json(capsys, str(tmp_path / "ckpt"))
    assert info["is_checkpoint"] is True
    assert info["checkpoint_hash"] == card["sha256"] == content_sha256(tmp_path / "ckpt")
    named = run_json(capsys, "dpiqa-student-tiny")
    assert info["parameters"] == named["parameters"] and info["flops"] == named["flops"]
    assert named["checkpoint_hash"].startswith("random:seed0:")


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    models.build("dpiqa-teacher-tiny").save_pretrained(str(tmp_path / "ckpt"))
    assert main(["model-info", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["checkpoint"].split()[-1] == content_sha256(tmp_path / "ckpt")
    info = run_json(capsys, str(tmp_path / "ckpt"))
    assert f"{info['parameters']['unet']:,}" in lines["unet"]
    assert lines["quality"].split()[-1] == "8x16x16"
    assert "GFLOP (cached)" in out


def test_unknown_model_is_a_one_line_error(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["model-info", str(tmp_path / "missing")]) == 4
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err and "error" in err


def test_ablation_switch_shows_in_counts_flops_and_table(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    paper = run_json(capsys, "dpiqa-teacher-tiny")
    assert paper["ablation"] == {} and paper["switches"]["text_adapter"] is True
    assert main(["model-info", "dpiqa-teacher-tiny", "--set", "text_adapter=false", "--json"]) == 0
    ablated = json.loads(capsys.readouterr().out)
    removed = 2 * (16 * 16 + 16) + 16  # the tiny text adapter: two Linear(16, 16) and gamma (16)
    assert paper["parameters"]["text_adapter"] == removed and ablated["parameters"]["text_adapter"] == 0
    assert paper["parameters"]["total"] - ablated["parameters"]["total"] == removed
    assert paper["flops"]["text_adapter"] == 2 * 2 * 6 * 16 * 16 and ablated["flops"]["text_adapter"] == 0
    assert ablated["ablation"] == {"text_adapter": False} and ablated["switches"]["text_adapter"] is False
    assert ablated["checkpoint_hash"] != paper["checkpoint_hash"]  # another configuration

    assert (
        main(["model-info", "dpiqa-teacher-tiny", "--set", "decoder_levels=[0,1]", "--set", "prompt_set=empty-1"]) == 0
    )
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["switches"].split(None, 1)[1] == 'prompt_set="empty-1", decoder_levels=[0, 1]'
    assert int(lines["buffers"].split()[-1].replace(",", "")) == 1 * 16  # K = 1 prompt embedding
    assert main(["model-info", "dpiqa-teacher-tiny"]) == 0
    assert "switches         none (the paper's model)" in capsys.readouterr().out

    models.build("dpiqa-teacher-tiny").save_pretrained(str(tmp_path / "ckpt"))
    assert main(["model-info", str(tmp_path / "ckpt"), "--set", "timestep=5"]) == 2
    assert "not to checkpoints" in capsys.readouterr().err
    assert main(["model-info", "dpiqa-teacher-tiny", "--set", "text_adaptor=false"]) == 2
    assert "has no field text_adaptor" in capsys.readouterr().err
