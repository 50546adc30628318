"""`facepipe serve` benchmark: p50/p99 latency and images/s for 1 and 8 concurrent clients, against
calling the same recognition (`OnlineRecognizer.answer`, one image per call) in-process on the same images.

    OMP_NUM_THREADS=2 .venv/bin/python bench/serve.py [--gallery G --detector D --recognizer R] [--seconds 15]

Without models, it enrols lfw-dev identities I..K (first photo each, people with 2+ photos) with
an untrained recognizer (iresnet18 at width 0.25, 112 px) and no detector (each photo is one
center-cropped face), and posts their other photos: speed does not depend on the weights, but an
untrained detector's face count does (512 faces per photo at score 0.5, none at 0.9), so a
detector is timed only when a trained one is given (--detector). The service runs as its own
process (`facepipe serve` on 127.0.0.1), the clients are threads here.

With a trained recognizer (`--recognizer R`, e.g. bench/lfw_dev.py's DIR/model.pt, without --gallery),
the gallery enrols the first --enrol photos of each I..K person with more photos than that, and the
bench also posts every other photo of those people and one photo of each I..K person never enrolled
(strangers) to the service: the share named correctly and the share of strangers answered unknown at
the gallery's calibrated threshold are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LFW_DEV = ROOT.parent / "shared" / "data" / "lfw-dev" / "images"


def models(work: Path, identities: int, recognizer: Path | None = None,
           per_person: int = 1) -> tuple[Path, None, Path, list[Path], list[Path]]:
    """A gallery of lfw-dev I..K people (an untrained recognizer unless one is given), their other
    photos as probes, and one photo of each I..K person left out of the gallery (strangers)."""
    import torch

    from facepipe.gallery.build import GalleryConfig, build_gallery
    from facepipe.recognition.backbones import build_backbone

    everyone = [p for p in sorted(LFW_DEV.iterdir()) if p.name[0] in "IJK"]
    people = [p for p in everyone if len(list(p.iterdir())) > per_person][:identities]
    strangers = [sorted(p.iterdir())[0] for p in everyone if p not in people]
    enrol, probes = work / "enrol", []
    for person in people:
        photos = sorted(person.iterdir())
        (enrol / person.name).mkdir(parents=True)
        for photo in photos[:per_person]:
            (enrol / person.name / photo.name).symlink_to(photo)
        probes += photos[per_person:]
    if recognizer is not None:
        build_gallery(GalleryConfig(), enrol, None, recognizer, work / "gallery")
        return work / "gallery", None, recognizer, probes, strangers
    torch.manual_seed(0)
    tiny = dict(backbone="iresnet18", width=0.25, embedding_size=128, input_size=112)
    recognizer = work / "recognizer.pt"
    backbone = build_backbone(tiny["backbone"], tiny["input_size"], tiny["embedding_size"], tiny["width"])
    torch.save({"kind": "recognizer", "state_dict": backbone.state_dict(), "config": tiny, "num_classes": 10,
                "embedding_size": tiny["embedding_size"], "input_size": tiny["input_size"]}, recognizer)
    build_gallery(GalleryConfig(), enrol, None, recognizer, work / "gallery")
    return work / "gallery", None, recognizer, probes, strangers


def answers(url: str, probes: list[Path], strangers: list[Path]) -> dict:
    """Post each probe and stranger once: named correctly / strangers answered unknown."""
    import requests

    def top(photo: Path):
        r = requests.post(url + "/v1/recognize", data=photo.read_bytes(), timeout=60)
        faces = r.json().get("faces", []) if r.status_code == 200 else []
        return max(faces, key=lambda f: f["score"])["identity"] if faces else None

    named = sum(top(p) == p.parent.name for p in probes)
    unknown = sum(top(p) is None for p in strangers)
    return {"probes": len(probes), "named_correctly": named, "strangers": len(strangers), "strangers_unknown": unknown}


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50_ms": round(pick(0.5), 1), "p99_ms": round(pick(0.99), 1)}


def timed(call, images: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads calling `call(image)` round-robin for `seconds`: latency percentiles, images/s."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            call(images[i % len(images)])
            latencies.append(time.perf_counter() - t0)
            i += clients

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "images": len(latencies), "images_per_s": round(len(latencies) / wall, 2),
            **percentiles(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery")
    parser.add_argument("--detector", default=None)
    parser.add_argument("--recognizer")
    parser.add_argument("--identities", type=int, default=40)
    parser.add_argument("--enrol", type=int, default=1, help="photos enrolled per person (built galleries)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--out", default=None, help="write bench_serve.json here")
    args = parser.parse_args()

    import requests

    from facepipe.gallery.align import read_image
    from facepipe.serving.online import OnlineRecognizer
    sys.path.insert(0, str(ROOT))  # tests.fixtures, when run as a script
    from tests.fixtures.services import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    strangers: list[Path] = []
    if args.gallery:
        gallery, detector, recognizer = Path(args.gallery), args.detector, Path(args.recognizer)
        probes = sorted(p for p in LFW_DEV.glob("[IJK]*/*.jpg"))[:200]
    else:
        trained = Path(args.recognizer) if args.recognizer else None
        gallery, detector, recognizer, probes, strangers = models(work, args.identities, trained, args.enrol)
        strangers = strangers if trained else []
    all_probes, probes = probes, probes[:200]
    images = [p.read_bytes() for p in probes]

    service = OnlineRecognizer(gallery, detector, recognizer)
    decoded = {id(b): read_image(p) for b, p in zip(images, probes)}
    faces = [len(service.answer([(decoded[id(b)], None, None)])[0]["faces"]) for b in images[:20]]
    results = {"probes": len(images), "faces_per_image": round(statistics.mean(faces), 2),
               "in_process": timed(lambda b: service.answer([(decoded[id(b)], None, None)]), images, 1, args.seconds)}

    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    env.pop("FACEPIPE_SERVE_TOKEN", None)
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "facepipe.cli", "serve", str(gallery), str(detector or "none"),
                             str(recognizer), "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if requests.get(url + "/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        sessions = {}

        def post(body: bytes) -> None:
            import threading

            session = sessions.setdefault(threading.get_ident(), requests.Session())
            r = session.post(url + "/v1/recognize", data=body, timeout=60)
            if r.status_code not in (200, 422):  # 422: the detector found no face
                raise RuntimeError(f"{r.status_code}: {r.text[:200]}")

        for clients in (1, 8):
            results[f"serve_{clients}"] = timed(post, images, clients, args.seconds)
        results["batches_answered"] = requests.get(url + "/healthz", timeout=5).json()["batches"]
        if strangers:
            results["answers"] = answers(url, all_probes, strangers)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ref = results["in_process"]
    print(f"{'':>22} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x in-process images/s':>22}")
    for key in ("in_process", "serve_1", "serve_8"):
        r = results[key]
        print(f"{key + ' (' + str(r['clients']) + ' client' + ('s' if r['clients'] > 1 else '') + ')':>22} "
              f"{r['images_per_s']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['images_per_s'] / ref['images_per_s']:>22.2f}")
    print(f"probes {results['probes']}, faces/image {results['faces_per_image']}, "
          f"batches answered by the service {results['batches_answered']}; "
          f"p50 latency ratio serve_1 / in-process {results['serve_1']['p50_ms'] / ref['p50_ms']:.2f}")
    if "answers" in results:
        a = results["answers"]
        print(f"answers of the service ({args.enrol} photo(s) enrolled per person, gallery threshold): "
              f"{a['named_correctly']}/{a['probes']} other photos named correctly "
              f"({a['named_correctly'] / a['probes']:.3f}), {a['strangers_unknown']}/{a['strangers']} strangers "
              f"answered unknown ({a['strangers_unknown'] / max(1, a['strangers']):.3f})")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_serve.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
