"""Training-step throughput: the full `train_recognition` step vs a bare PyTorch loop.

    python bench/train_recognition.py [--backbone iresnet18 --width 0.25 --input-size 64 --batch 32 --steps 20]

Full step: reading the .rec, decoding, augmenting (DataLoader workers), forward, margin loss,
backward, clipping, optimizer, scheduler, logging. Bare loop: the same backbone, head, batch and
autocast on one in-memory tensor batch. Both run in child processes (alternating, two rounds, best
of each) so each reports its own peak memory. Goal: full >= 0.9x bare (the data path is never
the bottleneck).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + workers) / 1024.0


def _config(args, **extra):
    from facepipe.config import from_dict
    from facepipe.recognition.config import RecognitionTrainConfig

    return from_dict(RecognitionTrainConfig, {
        "backbone": args.backbone, "width": args.width, "input_size": args.input_size, "embedding_size": 128,
        "batch_size": args.batch, "loss": "arcface", "scale": 32.0, "amp": args.amp, "workers": args.workers,
        "augment": "flip_jitter", "checkpoint_every": 0, "export_onnx": False, "log_every": 10, **extra})


def phase_full(args) -> dict:
    from facepipe.recognition.train import train_recognition

    out = Path(tempfile.mkdtemp(prefix="bench_full_"))
    metrics = train_recognition(_config(args, max_steps=args.steps, epochs=1000), args.data, out)
    return {"samples_per_s": metrics["train.samples_per_s"], "peak_mb": _peak_mb()}


def phase_bare(args) -> dict:
    import torch

    from facepipe.data.insightface import FaceRecordSet
    from facepipe.recognition.backbones import build_backbone
    from facepipe.recognition.engine import autocast_for
    from facepipe.recognition.losses import MarginHead

    cfg = _config(args)
    num_classes = FaceRecordSet(args.data).num_classes
    torch.manual_seed(0)
    model = build_backbone(cfg.backbone, cfg.input_size, cfg.embedding_size, cfg.width)
    head = MarginHead(num_classes, cfg.embedding_size, cfg.loss, cfg.margins(), cfg.scale)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(cfg.batch_size, 3, cfg.input_size, cfg.input_size)
    y = torch.randint(0, num_classes, (cfg.batch_size,))
    rates = []
    for _ in range(args.steps):
        t = time.perf_counter()
        with autocast_for(torch.device("cpu"), cfg.amp):
            emb = model(x)
        loss, _ = head(emb.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rates.append(cfg.batch_size / (time.perf_counter() - t))
    return {"samples_per_s": statistics.median(rates), "peak_mb": _peak_mb()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="iresnet18")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CPU)")
    ap.add_argument("--data", help="packed .rec folder (default: synthesise 40 identities x 16 faces)")
    ap.add_argument("--phase", choices=["full", "bare"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        result = phase_full(args) if args.phase == "full" else phase_bare(args)
        print("RESULT " + json.dumps(result))
        return 0

    if not args.data:
        from facepipe.data.pack import PackConfig, pack
        from facepipe.data.synth import SynthConfig, synthesize

        tmp = Path(tempfile.mkdtemp(prefix="bench_train_rec_"))
        synthesize(SynthConfig(identities=40, images=16, scenes=0, eval_identities=0), tmp / "synth")
        pack(PackConfig(size=args.input_size, workers=1), tmp / "synth" / "faces", tmp / "rec", progress=False)
        args.data = str(tmp / "rec")
    base = [sys.executable, __file__, "--data", args.data, "--backbone", args.backbone, "--width", str(args.width),
            "--input-size", str(args.input_size), "--batch", str(args.batch), "--steps", str(args.steps),
            "--workers", str(args.workers)] + (["--amp"] if args.amp else [])
    runs: dict[str, list[dict]] = {"bare": [], "full": []}
    for _ in range(2):
        for phase in ("bare", "full"):
            proc = subprocess.run(base + ["--phase", phase], capture_output=True, text=True, env=os.environ)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
            runs[phase].append(json.loads(line[len("RESULT "):]))
    bare = max(r["samples_per_s"] for r in runs["bare"])
    full = max(r["samples_per_s"] for r in runs["full"])
    print(f"{args.backbone} width {args.width} at {args.input_size}px, batch {args.batch}, "
          f"{'bf16' if args.amp else 'fp32'}, {args.workers} loader worker(s), threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'':<34}{'samples/s':>10}{'peak MB':>10}")
    print(f"{'bare loop (in-memory tensors)':<34}{bare:>10.1f}{max(r['peak_mb'] for r in runs['bare']):>10.0f}")
    print(f"{'full step (.rec, decode, augment)':<34}{full:>10.1f}{max(r['peak_mb'] for r in runs['full']):>10.0f}")
    print(f"ratio full / bare: {full / bare:.2f}x (goal >= 0.9x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
