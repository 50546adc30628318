"""The images as a user gets them: pushed by `make push-images`, pulled back from the registry, run
offline as uid 1000 on a mounted dataset, pinned by digest in the compiled pipeline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.containers.harness import PROJECT_ROOT, TIMINGS, docker, make_push_images, summary_table

pytestmark = pytest.mark.containers

IMAGES = ("facepipe-data", "facepipe-train")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "_SK=", "_AK=")


def registry_digest(host: str, repo: str, tag: str) -> str:
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["Docker-Content-Digest"]


def test_lock_records_what_the_registry_serves(pushed, sandbox):
    body = pushed["body"]
    assert body["registry"] == pushed["registry"]
    assert sorted(body["images"]) == sorted(IMAGES)
    for name, entry in body["images"].items():
        assert re.fullmatch(r"[0-9a-f]{32}", entry["tag"]), entry
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"]), entry
        assert entry["reference"] == f"{pushed['registry']}/{name}@{entry['digest']}"
        # Checked against the registry itself, not against what the tool says it pushed.
        assert registry_digest(sandbox.registry_host, f"facepipe/{name}", entry["tag"]) == entry["digest"]


def test_no_credentials_in_output_lock_or_docker_config(pushed, sandbox, registry_password):
    assert registry_password not in pushed["output"]
    assert registry_password not in pushed["lock"].read_text()
    # The login went to a throw-away DOCKER_CONFIG: the client config stays without auths.
    config = Path(sandbox.env["DOCKER_CONFIG"]) / "config.json"
    assert not config.exists() or registry_password not in config.read_text()
    assert "auths" not in (json.loads(config.read_text()) if config.exists() else {}) or \
        not json.loads(config.read_text())["auths"]


@pytest.fixture(scope="module")
def pulled(pushed, sandbox):
    """Every image removed locally (with the build's intermediate stages), then pulled back by digest."""
    entries = pushed["body"]["images"]
    for name, entry in entries.items():
        docker(sandbox, "rmi", "--force", f"{pushed['registry']}/{name}:{entry['tag']}", check=False)
    docker(sandbox, "image", "prune", "--force")
    refs = {}
    for name, entry in entries.items():
        assert docker(sandbox, "image", "inspect", entry["reference"], check=False).returncode != 0
        started = time.monotonic()
        docker(sandbox, "pull", entry["reference"])
        size = int(docker(sandbox, "image", "inspect", "--format", "{{.Size}}", entry["reference"]).stdout)
        TIMINGS[f"pull {name}"] = f"{time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB"
        refs[name] = entry["reference"]
    return refs


def test_images_run_as_ma_user_and_carry_no_secrets(pulled, sandbox, registry_password):
    for name, ref in pulled.items():
        ids = docker(sandbox, "run", "--rm", "--network", "none", "--entrypoint", "id", ref).stdout
        assert "uid=1000(ma-user) gid=100(users)" in ids, ids
        config = json.loads(docker(sandbox, "image", "inspect", ref).stdout)[0]["Config"]
        # No entrypoint: the KFP command (`sh -ec ...`) must run as the container command.
        assert config["User"] == "1000:100" and not config["Entrypoint"] and config["Cmd"] == ["facepipe", "--help"]
        env = "\n".join(config["Env"])
        assert not any(w in env.upper() for w in SECRET_WORDS), env
        history = docker(sandbox, "history", "--no-trunc", ref).stdout
        assert registry_password not in history and registry_password not in env


def test_train_image_has_the_locked_cpu_torch(pulled, sandbox):
    from images.build import read_lock

    lock = read_lock(PROJECT_ROOT / "requirements.lock")
    code = "import torch, onnxruntime, faiss, mlflow, cv2; print(torch.__version__)"
    out = docker(sandbox, "run", "--rm", "--network", "none", "--entrypoint", "python",
                 pulled["facepipe-train"], "-c", code).stdout.strip()
    assert out == f"{lock['torch']}+cpu", out
    # The data image stays light: no torch.
    proc = docker(sandbox, "run", "--rm", "--network", "none", "--entrypoint", "python",
                  pulled["facepipe-data"], "-c", "import kfp, boto3, obs, cv2, numpy; import torch", check=False)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def run_step(sandbox, ref: str, work: Path, *args: str) -> str:
    """`facepipe ARGS` in the image: offline, as uid 1000, with `work` mounted at /work."""
    started = time.monotonic()
    proc = docker(sandbox, "run", "--rm", "--network", "none", "--user", "1000:100",
                  "-e", "OMP_NUM_THREADS=2", "-v", f"{work}:/work", ref, "facepipe", *args, timeout=900)
    TIMINGS[f"facepipe {args[0]} in container"] = f"{time.monotonic() - started:.0f} s"
    return proc.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("mounted")
    os.chown(work, 1000, 100) if os.geteuid() == 0 else work.chmod(0o777)
    return work


@pytest.fixture(scope="module")
def packed(pulled, sandbox, work) -> Path:
    run_step(sandbox, pulled["facepipe-data"], work, "synth", "/work/synth", "--identities", "8",
             "--images", "6", "--scenes", "3", "--seed", "1")
    out = run_step(sandbox, pulled["facepipe-data"], work, "pack", "/work/synth/faces", "/work/rec",
                   "--size", "64", "--workers", "1", "--quiet")
    summary = json.loads(out.strip().splitlines()[0])
    assert summary["images_packed"] == 8 * 6 and summary["identities_packed"] == 8, out
    return work / "rec"


def test_pack_in_the_data_image(packed):
    from facepipe.manifest import read_manifest

    for f in ("train.rec", "train.idx", "train.lst", "property", "pack_report.json"):
        assert (packed / f).is_file(), f
    assert (packed / "property").read_text().strip().startswith("8,64,64")
    read_manifest(packed, verify=True)
    assert (packed / "train.rec").stat().st_uid == 1000


def test_train_recognition_in_the_train_image(pulled, sandbox, packed, work):
    sets = {"backbone": "iresnet18", "width": 0.25, "input_size": 56, "embedding_size": 32, "batch_size": 8,
            "workers": 0, "lr": 0.05, "scale": 16.0, "epochs": 1, "max_steps": 2, "device": "cpu",
            "export_onnx": True, "checkpoint_every": 0}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
    out = run_step(sandbox, pulled["facepipe-train"], work, "train-recognition", "/work/rec", "/work/model", *args)
    model = work / "model"
    for f in ("model.pt", "model.onnx", "metrics.json", "manifest.json"):
        assert (model / f).is_file(), (f, out[-2000:])
    from facepipe.recognition.embed import Recognizer

    rec = Recognizer.load(model / "model.pt")
    assert (rec.input_size, rec.embedding_size) == (56, 32)


def test_second_push_builds_and_pushes_nothing(pushed, pulled, sandbox):
    before = pushed["lock"].read_text()
    proc, seconds = make_push_images(sandbox, pushed["registry"], pushed["lock"], pushed["source"])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    TIMINGS["make push-images (again, unchanged)"] = f"{seconds:.0f} s, summary:\n" + summary_table(output)
    assert f"built 0, pushed 0 of {len(IMAGES)} images" in output, output[-3000:]
    assert "docker build" not in output and "The push refers to" not in output
    assert pushed["lock"].read_text() == before


def test_compiled_pipeline_pins_the_pushed_digests(pushed, tmp_path):
    if not (PROJECT_ROOT / "pipeline" / "compile.py").exists():
        pytest.skip("pipeline/compile.py not present")
    out = tmp_path / "pipeline.yaml"
    # The images here hold CPU torch (as the lock records), so the GPU steps are allowed onto them.
    assert pushed["body"]["images"]["facepipe-train"]["torch_variant"] == "cpu"
    proc = subprocess.run([sys.executable, "-m", "pipeline.compile", "--out", str(out), "--lock", str(pushed["lock"]),
                           "--allow-cpu-torch-on-gpu"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = out.read_text()
    images = set(re.findall(r"image: (\S+)", spec))
    assert images, "no images in the compiled pipeline"
    assert images <= {e["reference"] for e in pushed["body"]["images"].values()}, images
    for entry in pushed["body"]["images"].values():
        assert entry["reference"] in spec
