"""Bench: the margin head at a large class count on 2 CPU ranks (gloo), Partial FC sample rate 0.1 vs 1.0.

    python bench/partial_fc.py [--classes 1000000 --dim 512 --batch 128 --steps 3 --rates 0.1,1.0]

Each rank holds 1/2 of the class centers (`MarginHead` under a process group, as training does) and
an SGD optimizer with momentum over them; embeddings are random unit vectors standing in for the
backbone's (a leaf tensor with a gradient, so the backward reaches the embeddings as in training).
`--batch` is the global batch (split over the ranks and gathered back by the head). One fresh pair
of processes per rate, so each peak RSS is that rate's own. Per rank: peak RSS, the bytes of the
head's state (centers + gradient + momentum) and of one step's logits; samples/s is the global
batch over the median step time (forward, backward, optimizer). The reference is the full softmax
(rate 1.0) in the same script: Partial FC's gain is rate 1.0's time and logits over rate 0.1's.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

WARMUP = 1


def _rank(args) -> None:
    import torch
    import torch.distributed as dist

    from facepipe.recognition.losses import MarginHead

    torch.set_num_threads(1)  # 2 ranks on a 2-core machine: one core each, as torchrun's OMP_NUM_THREADS=1
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=2)
    torch.manual_seed(args.rank)
    head = MarginHead(args.classes, args.dim, "arcface", (1.0, 0.5, 0.0), 64.0, args.rate)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    per_rank = args.batch // 2
    times = []
    for step in range(WARMUP + args.steps):
        emb = torch.nn.functional.normalize(torch.randn(per_rank, args.dim)).requires_grad_()
        labels = torch.randint(0, args.classes, (per_rank,))
        dist.barrier()
        t = time.perf_counter()
        loss, _ = head(emb, labels)
        opt.zero_grad(set_to_none=True)  # as the training loop
        loss.backward()
        opt.step()
        dist.barrier()
        if step >= WARMUP:
            times.append(time.perf_counter() - t)
    state = head.weight.numel() * head.weight.element_size()
    sampled = min(head.num_local, max(1, math.ceil(args.rate * head.num_local)))  # as MarginHead._sample
    result = {"rank": args.rank, "num_local": head.num_local, "sampled": sampled,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "centers_mb": state / 2**20, "grad_mb": state / 2**20,
              "momentum_mb": sum(s["momentum_buffer"].numel() * 4 for s in opt.state.values()) / 2**20,
              "logits_mb": args.batch * sampled * 4 / 2**20,
              "step_s": statistics.median(times), "loss": float(loss.detach())}
    print("RESULT " + json.dumps(result), flush=True)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return info["MemAvailable"] / 1024


def run_rate(args, rate: float) -> list[dict]:
    port = _free_port()
    cmd = [sys.executable, __file__, "--classes", str(args.classes), "--dim", str(args.dim), "--batch",
           str(args.batch), "--steps", str(args.steps), "--rate", str(rate), "--port", str(port)]
    procs = [subprocess.Popen(cmd + ["--rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"rank failed (rate {rate}):\n{err[-3000:]}")
            results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:]))
    finally:
        for p in procs:  # a bench stopped early must not leave two ranks holding GBs of centers
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128, help="global batch (both ranks together)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one untimed)")
    ap.add_argument("--rates", default="0.1,1.0")
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops it: run the cleanup above
    if args.rank is not None:
        _rank(args)
        return 0

    # per rank: ~400 MB of torch, centers + gradient + momentum (3 shards), and temporaries measured
    # at 100k classes as ~6.4 shards at rate 1.0 (F.normalize of the centers and its backward, SGD's
    # weight-decay copy of the gradient) and ~1.2 at rate 0.1; a line through those two points
    rates = [float(r) for r in args.rates.split(",")]
    shard_mb = args.classes / 2 * args.dim * 4 / 2**20
    need_mb = 2 * (400 + (3 + 0.6 + 5.8 * max(rates)) * shard_mb)
    print(f"{args.classes} classes x {args.dim} (fp32), 2 gloo ranks x 1 thread, global batch {args.batch}; "
          f"estimated need {need_mb / 1024:.1f} GB at rate {max(rates)}, {_available_mb() / 1024:.1f} GB available")
    if need_mb > 0.8 * _available_mb():
        print("not enough memory for this class count here: lower --classes (memory and step time grow "
              "linearly with it)")
        return 1
    rows = {}
    print(f"{'rate':>5}{'centers/rank':>13}{'sampled':>10}{'state MB/rank':>15}{'logits MB':>11}"
          f"{'peak RSS MB/rank':>18}{'step s':>8}{'samples/s':>11}", flush=True)
    for rate in rates:
        rows[rate] = ranks = run_rate(args, rate)
        r0 = ranks[0]  # each row as soon as it is measured: a slow machine may not reach the next
        state = r0["centers_mb"] + r0["grad_mb"] + r0["momentum_mb"]
        step = max(r["step_s"] for r in ranks)
        print(f"{rate:>5.2f}{r0['num_local']:>13}{r0['sampled']:>10}{state:>15.0f}{r0['logits_mb']:>11.0f}"
              f"{max(r['peak_rss_mb'] for r in ranks):>18.0f}{step:>8.2f}{args.batch / step:>11.1f}", flush=True)
    if 0.1 in rows and 1.0 in rows:
        fast = max(r["step_s"] for r in rows[0.1])
        full = max(r["step_s"] for r in rows[1.0])
        rss = [max(r["peak_rss_mb"] for r in rows[k]) for k in (0.1, 1.0)]
        print(f"Partial FC 0.1 vs full softmax 1.0: {full / fast:.2f}x samples/s, peak RSS per rank "
              f"{rss[0]:.0f} vs {rss[1]:.0f} MB ({rss[1] / rss[0]:.2f}x); the centers' gradient and momentum "
              f"stay full-size at both rates (the sampled rows are gathered from the shard)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
