"""End-to-end inference benchmark: latency and throughput per precision, and agreement with fp32.

A verify-like set: synthetic 450x450 BMP cells (fastall.synth), a deterministic random-init ResNet-50 (no
ImageNet weights offline) and a head trained on the fp32 features of a separate training split, so that its
predictions are meaningful and agreement can fail. For each precision: agreement of predicted classes with
eager fp32 on the evaluation images (int8 calibrated on training images only), batch-1 latency p50/p90/p99
end-to-end (file -> probabilities) and model-only, and throughput per batch size. Every figure is also given
as a ratio against the eager fp32 baseline measured in the same run.

    PYTHONPATH=$PWD python3 benchmarks/inference.py --device cpu --out benchmarks/results/inference_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from fastall.backbone import load_backbone
from fastall.bench import PAPER_CLAIMS_MS, agreement, latency, machine_info, synthetic_files, throughput
from fastall.head import Head
from fastall.images import decode_image
from fastall.loader import default_workers
from fastall.model import LeukemiaClassifier
from fastall.preprocess import resize_uint8

CPU_TARGET_MS = 30.0
MIN_AGREEMENT = 0.995
DEFAULTS = {"cpu": {"precisions": "fp32,fp32-jit,bf16-jit,int8-jit", "batch_sizes": "1,8,32"},
            "cuda": {"precisions": "fp32,bf16,fp16", "batch_sizes": "1,8,32,256"}}


def train_head(feats: torch.Tensor, labels: torch.Tensor, steps: int = 300, seed: int = 0) -> Head:
    """The paper's head on standardised features (full-batch Adam, dropout off for a stable fit).

    As in train-head, a feature with no spread keeps std 1."""
    torch.manual_seed(seed)
    head = Head(dropout=0.0)
    std = feats.std(0)
    head.set_standardization(feats.mean(0), torch.where(std > 0, std, torch.ones_like(std)))  # as train-head
    opt = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), labels).backward()
        opt.step()
    return head.eval()


@torch.inference_mode()
def features(model: LeukemiaClassifier, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.forward_features(c).cpu() for c in pixels.split(32)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--precisions", default=None, help="comma list of fp32|bf16|fp16|int8[-jit]")
    ap.add_argument("--batch-sizes", default=None)
    ap.add_argument("--train-images", type=int, default=100)
    ap.add_argument("--eval-images", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=None, help="latency rounds, best kept [3 on CPU, 1 on GPU]")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    precisions = (args.precisions or DEFAULTS[dev.type]["precisions"]).split(",")
    batch_sizes = [int(b) for b in (args.batch_sizes or DEFAULTS[dev.type]["batch_sizes"]).split(",")]
    t0, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fastall-inference-") as tmp:
        files = synthetic_files(tmp, args.train_images + args.eval_images)
        labels = torch.tensor([1 if p.name.endswith("_all.bmp") else 0 for p in files])
        pixels = torch.stack([resize_uint8(decode_image(p), args.image_size) for p in files])
        train, held = slice(0, args.train_images), slice(args.train_images, None)
        backbone, info = load_backbone("none", seed=0)
        label = "random-init ResNet-50 + head trained on synthetic cells"
        model = LeukemiaClassifier(backbone, Head(), image_size=args.image_size, class_names=["hem", "all"],
                                   provenance={"label": label})
        model.to(dev)
        feats = features(model, pixels)
        model.head = train_head(feats[train], labels[train]).to(dev)
        with torch.inference_mode():
            predicted = model.forward_head(feats[held].to(dev)).argmax(1).cpu()
        acc = float((predicted == labels[held]).double().mean())
        print(f"set-up {time.perf_counter() - t0:.0f}s; held-out head accuracy {acc:.3f}", flush=True)
        results = {}
        for name in precisions:
            precision, jit = name.removesuffix("-jit"), name.endswith("-jit")
            t = time.perf_counter()
            agree = agreement(model, pixels[held], precision, pixels[train] if precision == "int8" else None,
                              jit=jit)
            if name == "fp32":
                model.optimize("fp32", jit=False)
            rounds = args.rounds or (3 if dev.type == "cpu" else 1)
            lat = latency(model, files, warmup=5, iters=args.iters, rounds=rounds)
            workers = default_workers(dev)
            tput = [throughput(model, files, bs, batches=3, workers=workers) for bs in batch_sizes]
            results[name] = {"precision": precision, "jit": jit, "agreement_vs_fp32": agree,
                             "latency_batch1": lat, "throughput": tput}
            print(f"{name:9s} e2e p50 {lat['end_to_end']['p50_ms']:7.2f} ms  model p50 "
                  f"{lat['model_only']['p50_ms']:7.2f} ms  agreement {agree['agreement']:.4f}  "
                  f"({time.perf_counter() - t:.0f}s)", flush=True)
    summary = summarize(results, dev.type)
    out = {"benchmark": "inference", "machine": machine_info(dev), "device": dev.type,
           "torch": torch.__version__, "torchvision": torchvision.__version__,
           "config": {**vars(args), "precisions": precisions, "batch_sizes": batch_sizes,
                      "weights": "none (random init, seed 0)", "weights_sha256": info.sha256,
                      "images": "synthetic 450x450 24-bit BMP cells (fastall.synth)",
                      "held_out_head_accuracy": acc},
           "results": results, **summary, "seconds": time.perf_counter() - t0,
           "load_average_start_end": [list(load_start), list(os.getloadavg())]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def summarize(results: dict, device: str) -> dict:
    """Ratios against eager fp32, and the chosen precision: fastest end-to-end p50 with >= 99.5% agreement."""
    base = results.get("fp32")
    ratios = {}
    for name, r in results.items():
        if base is None:
            break
        ratios[name] = {
            "end_to_end_p50_vs_fp32": r["latency_batch1"]["end_to_end"]["p50_ms"]
            / base["latency_batch1"]["end_to_end"]["p50_ms"],
            "model_only_p50_vs_fp32": r["latency_batch1"]["model_only"]["p50_ms"]
            / base["latency_batch1"]["model_only"]["p50_ms"],
            "throughput_vs_fp32": {str(t["batch_size"]): t["end_to_end_img_s"] / b["end_to_end_img_s"]
                                   for t, b in zip(r["throughput"], base["throughput"], strict=True)},
        }
    ok = {n: r for n, r in results.items() if r["agreement_vs_fp32"]["agreement"] >= MIN_AGREEMENT}
    name = min(ok, key=lambda n: ok[n]["latency_batch1"]["end_to_end"]["p50_ms"]) if ok else None
    chosen = None
    if name is not None:
        r = ok[name]
        p50 = r["latency_batch1"]["end_to_end"]["p50_ms"]
        chosen = {"name": name, "precision": r["precision"], "jit": r["jit"],
                  "agreement_vs_fp32": r["agreement_vs_fp32"]["agreement"], "end_to_end_p50_ms": p50,
                  "model_only_p50_ms": r["latency_batch1"]["model_only"]["p50_ms"],
                  "paper_claim_ms": PAPER_CLAIMS_MS[device],
                  "p50_vs_paper_claim": p50 / PAPER_CLAIMS_MS[device],
                  "end_to_end_vs_model_only_throughput": {str(t["batch_size"]): t["end_to_end_vs_model_only"]
                                                          for t in r["throughput"]}}
        if device == "cpu":
            chosen.update(target_ms=CPU_TARGET_MS, p50_vs_target=p50 / CPU_TARGET_MS,
                          meets_target=p50 <= CPU_TARGET_MS)
    return {"ratios_vs_fp32": ratios, "chosen": chosen}


if __name__ == "__main__":
    main()
