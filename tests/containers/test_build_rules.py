"""images.build's rules that need no Docker engine: content tags, credentials from the environment,
and clear errors on bad registry names, pins and lock files. (Not in the containers marker: fast.)"""

from __future__ import annotations

import hashlib
import hmac
import zipfile
from pathlib import Path

import pytest

from images.build import (ImageBuildError, Outcome, arg_parser, content_tag, credentials, lock_entry,
                          main, pin_line, read_images_lock, read_lock, split_registry, torch_spec, variant_pins)


def make_context(root: Path, dockerfile: str = "FROM x\n", wheel_time=(2020, 1, 1, 0, 0, 0)) -> Path:
    (root / "wheels").mkdir(parents=True)
    (root / "project").mkdir()
    (root / "Dockerfile").write_text(dockerfile)
    (root / "requirements.txt").write_text("numpy==2.3.5 --hash=sha256:" + "0" * 64 + "\n")
    (root / "wheels" / "numpy-2.3.5-cp311-cp311-linux_x86_64.whl").write_bytes(b"wheel bytes")
    with zipfile.ZipFile(root / "project" / "facepipe-0.1.0-py3-none-any.whl", "w") as z:
        info = zipfile.ZipInfo("facepipe/__init__.py", date_time=wheel_time)
        z.writestr(info, "VERSION = 1\n")
    return root


def test_content_tag_follows_content_not_timestamps(tmp_path):
    a = content_tag(make_context(tmp_path / "a"), "base1", {"TORCH_VARIANT": "cpu"})
    # The same files with another zip timestamp inside the project wheel: same tag.
    assert content_tag(make_context(tmp_path / "b", wheel_time=(2024, 5, 6, 7, 8, 10)), "base1",
                       {"TORCH_VARIANT": "cpu"}) == a
    assert len(a) == 32 and int(a, 16) >= 0
    # Any change to the recipe, the base image or a build arg gives a new tag.
    assert content_tag(make_context(tmp_path / "c", dockerfile="FROM y\n"), "base1", {"TORCH_VARIANT": "cpu"}) != a
    assert content_tag(make_context(tmp_path / "d"), "base2", {"TORCH_VARIANT": "cpu"}) != a
    assert content_tag(make_context(tmp_path / "e"), "base1", {"TORCH_VARIANT": "cuda"}) != a


def test_content_tag_changes_with_the_code(tmp_path):
    ctx = make_context(tmp_path / "a")
    before = content_tag(ctx, "b", {})
    with zipfile.ZipFile(ctx / "project" / "facepipe-0.1.0-py3-none-any.whl", "w") as z:
        z.writestr("facepipe/__init__.py", "VERSION = 2\n")
    assert content_tag(ctx, "b", {}) != before


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD", "SWR_USERNAME", "SWR_PASSWORD",
              "HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_swr_login_is_derived_from_the_access_keys(clean_env):
    clean_env.setenv("HUAWEICLOUD_SDK_AK", "AKEXAMPLE")
    clean_env.setenv("HUAWEICLOUD_SDK_SK", "sk-secret")
    user, password = credentials("swr.cn-north-4.myhuaweicloud.com")
    assert user == "cn-north-4@AKEXAMPLE"
    assert password == hmac.new(b"sk-secret", b"AKEXAMPLE", hashlib.sha256).hexdigest()
    # The keys are SWR's; another registry gets nothing from them.
    assert credentials("registry.example.com") is None


def test_explicit_registry_credentials_win(clean_env):
    clean_env.setenv("HUAWEICLOUD_SDK_AK", "AK")
    clean_env.setenv("HUAWEICLOUD_SDK_SK", "SK")
    clean_env.setenv("REGISTRY_USERNAME", "robot")
    clean_env.setenv("REGISTRY_PASSWORD", "pw")
    assert credentials("swr.ap-southeast-1.myhuaweicloud.com") == ("robot", "pw")
    assert credentials("127.0.0.1:5000") == ("robot", "pw")


def test_bad_registry_names_are_refused():
    assert split_registry("swr.cn-north-4.myhuaweicloud.com/facepipe") == ("swr.cn-north-4.myhuaweicloud.com", "facepipe")
    assert split_registry("127.0.0.1:5000/a/b/") == ("127.0.0.1:5000", "a/b")
    with pytest.raises(ImageBuildError, match="without a scheme"):
        split_registry("https://swr.cn-north-4.myhuaweicloud.com/facepipe")
    with pytest.raises(ImageBuildError, match="registry host"):
        split_registry("facepipe")


def test_requirements_lock_errors_name_the_line(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==2.3.5\ntorch>=2\n")
    with pytest.raises(ImageBuildError, match=r"line 2: expected 'name==version'"):
        read_lock(lock)
    lock.write_text("# pins\nNumPy==2.3.5\nopencv_python_headless==4.14.0.94\ntorch==2.13.0\n")
    pins = read_lock(lock)
    assert pins == {"numpy": "2.3.5", "opencv-python-headless": "4.14.0.94", "torch": "2.13.0"}
    assert torch_spec("cpu", pins, None) == "torch==2.13.0+cpu"
    # `==2.13.0` would also match the local `2.13.0+cpu` wheel (PEP 440), and pip prefers that one.
    assert torch_spec("cuda", pins, None) == "torch===2.13.0"
    assert pin_line("torch", "2.13.0") == "torch===2.13.0"
    assert pin_line("torch", "2.13.0+cpu") == "torch==2.13.0+cpu" and pin_line("numpy", "2.3.5") == "numpy==2.3.5"
    assert torch_spec("cuda", pins, "torch==2.14.1") == "torch==2.14.1"


def test_a_broken_images_lock_is_reported(tmp_path):
    lock = tmp_path / "images.lock.json"
    assert read_images_lock(lock) == {}
    lock.write_text("{not json")
    with pytest.raises(ImageBuildError, match="not valid JSON"):
        read_images_lock(lock)
    lock.write_text('{"registry": "x/y", "images": []}')
    with pytest.raises(ImageBuildError, match="expected"):
        read_images_lock(lock)


def test_torch_variant_comes_from_the_environment_and_defaults_to_cpu(monkeypatch, capsys):
    monkeypatch.delenv("TORCH_VARIANT", raising=False)
    assert arg_parser().parse_args(["--registry", "127.0.0.1:5000/x"]).torch_variant == "cpu"
    monkeypatch.setenv("TORCH_VARIANT", "cuda")
    assert arg_parser().parse_args(["--registry", "127.0.0.1:5000/x"]).torch_variant == "cuda"
    assert arg_parser().parse_args(["--registry", "r.example/x", "--torch-variant", "cpu"]).torch_variant == "cpu"
    monkeypatch.setenv("TORCH_VARIANT", "rocm")  # refused before anything is built
    assert main(["--registry", "127.0.0.1:5000/x", "--no-push"]) == 2
    assert "(env TORCH_VARIANT) must be cpu or cuda, got 'rocm'" in capsys.readouterr().err


def test_the_images_lock_records_each_images_torch_variant():
    train = lock_entry(Outcome("facepipe-train", "t" * 32, "sha256:" + "a" * 64), "swr.example.com/ns", "cuda")
    assert train == {"tag": "t" * 32, "digest": "sha256:" + "a" * 64, "torch_variant": "cuda",
                     "reference": "swr.example.com/ns/facepipe-train@sha256:" + "a" * 64}
    data = lock_entry(Outcome("facepipe-data", "d" * 32, "sha256:" + "b" * 64), "swr.example.com/ns", "cuda")
    assert data["torch_variant"] == "none"  # no torch in it, whatever the variant of the run


def test_cuda_runtime_pins_join_the_lock_only_for_the_cuda_variant(tmp_path):
    pins = {"numpy": "2.3.5", "torch": "2.13.0"}
    cuda_lock = tmp_path / "requirements-cuda.lock"
    cuda_lock.write_text("nvidia-cublas-cu12==12.9.1.4\ntriton==3.5.0\n")
    assert variant_pins("cpu", pins, cuda_lock) == pins
    assert variant_pins("cuda", pins, cuda_lock) == {**pins, "nvidia-cublas-cu12": "12.9.1.4", "triton": "3.5.0"}
    assert variant_pins("cuda", pins, tmp_path / "absent.lock") == pins
    cuda_lock.write_text("numpy==2.0.0\n")
    with pytest.raises(ImageBuildError, match=r"requirements-cuda.lock: pins numpy==2.0.0"):
        variant_pins("cuda", pins, cuda_lock)
    cuda_lock.write_text("triton>=3\n")
    with pytest.raises(ImageBuildError, match="line 1: expected 'name==version'"):
        variant_pins("cuda", pins, cuda_lock)


def test_the_committed_cuda_pins_agree_with_requirements_lock():
    from images.build import CUDA_LOCK, PROJECT

    pins = read_lock(PROJECT / "requirements.lock")
    cuda = read_lock(CUDA_LOCK)
    assert "torch" not in cuda and {"triton", "cuda-toolkit"} <= set(cuda)
    assert variant_pins("cuda", pins) == {**pins, **cuda}
