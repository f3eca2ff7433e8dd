"""Prediction speed: ``hmc predict`` (PyTorch) against a bare timm forward and against the ONNX
Runtime predictor, peak memory of each, and the decoding's share of predict time on a large tree.

Every measurement runs in its own process (so peak RSS and thread settings are its own), on
the same JPEG files, in the same run; kinds alternate (bare, torch, onnx, bare, ...):

- ``bare``: decode JPEG, the same evaluation transform, ``timm.create_model(backbone,
  num_classes=200)(x)``: no hierarchy, nothing written.
- ``model``: the same, through hmc's model (backbone + HRN head) instead: no decoding, no rows.
  torch/model is the cost of decoding and writing (target: at most 10 %).
- ``torch``: :func:`hmc.load_model` + ``predict_files`` + ``write_predictions`` to CSV
  (what ``hmc predict --ckpt_path`` does).
- ``onnx``: :class:`hmc.onnx_predictor.OnnxPredictor` on the file of :func:`hmc.export`, the
  same rows to CSV (what ``hmc predict --model`` does).

The model is tf_efficientnet_lite0 + the HRN head (paper widths) on the cub200-hrn tree
(13/38/200), randomly initialised (speed does not depend on the weights), 224 px, batch 32.
The first batch of each process is a warm-up and is not timed. Reported: images/s, peak RSS
(MB) per process, and the ratios torch/bare (the issue's target >= 0.9), torch/model and
onnx/torch.

Decode cost at scale (``--decode``): a synthetic tree with iNaturalist-2021's level sizes
(3/13/51/273/1103/4884/10000 = 16,327 nodes), the HRN head on tf_efficientnet_lite0 features,
batch 256: seconds of the model forward and of :func:`hmc.decoding.decode` for each decoder.

    python benchmarks/predict.py --data ../shared/data/cub-crops-77/images --images 512 \
        --threads 1 2 --json benchmarks/results/predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BACKBONE = "tf_efficientnet_lite0"
INAT21_LEVELS = (3, 13, 51, 273, 1103, 4884, 10000)


def build_files(data: Path, n: int) -> list[str]:
    files = sorted(str(p) for p in data.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no .jpg files under {data}")
    step = max(1, len(files) // n)
    return files[::step][:n]  # spread over the classes


def make_artifacts(folder: Path, image_size: int) -> tuple[Path, Path]:
    """A checkpoint in `hmc fit`'s format (HMCModule.on_save_checkpoint) and its export."""
    import timm
    import torch
    from timm.data import resolve_data_config

    from hmc.onnx_export import export
    from hmc.training import HMCModule

    torch.manual_seed(0)
    module = HMCModule("cub200-hrn", backbone=BACKBONE, head="hrn")
    data_config = resolve_data_config(model=timm.create_model(BACKBONE, pretrained=False))
    data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()}
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    ckpt["hmc"]["transform"] = {
        "preset": "imagenet",
        "image_size": image_size,
        "data_config": data_config,
    }
    path = folder / "model.ckpt"
    torch.save(ckpt, path)
    t = time.perf_counter()
    onnx_path = export(path, folder / "model.onnx")
    print(f"export: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path, onnx_path


# ------------------------------------------------------------------------- workers
def worker(kind: str, files: list[str], args: argparse.Namespace) -> dict:
    threads = args.threads[0]
    bs = args.batch_size
    out_csv = Path(args.folder) / f"{kind}.csv"
    if kind == "onnx":
        from hmc.onnx_predictor import OnnxPredictor, write_predictions

        predictor = OnnxPredictor(Path(args.folder) / "model.onnx", threads=threads)

        def run(fs):
            write_predictions(predictor.predict_files(fs, bs), out_csv)
    else:
        import torch

        torch.set_num_threads(threads)
        if kind == "torch":
            from hmc.predict import load_model, write_predictions

            predictor = load_model(Path(args.folder) / "model.ckpt")

            def run(fs):
                write_predictions(predictor.predict_files(fs, bs), out_csv)
        else:
            import timm
            from PIL import Image

            from hmc.predict import load_model

            loaded = load_model(Path(args.folder) / "model.ckpt")
            transform = loaded.transform
            if kind == "model":  # hmc's backbone + head, without decoding or rows
                model = loaded.model
            else:
                model = timm.create_model(BACKBONE, pretrained=False, num_classes=200).eval()

            def run(fs):
                with torch.inference_mode():
                    for s in range(0, len(fs), bs):
                        batch = []
                        for f in fs[s : s + bs]:
                            with Image.open(f) as img:
                                batch.append(transform(img.convert("RGB")))
                        model(torch.stack(batch))

    run(files[:bs])  # warm-up
    t = time.perf_counter()
    run(files)
    seconds = time.perf_counter() - t
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.
    status = Path("/proc/self/status").read_text()
    rss = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]) / 1024
    return {"kind": kind, "threads": threads, "images": len(files), "seconds": seconds,
            "images_per_s": len(files) / seconds, "peak_rss_mb": rss}  # fmt: skip


def decode_cost(args: argparse.Namespace) -> dict:
    import torch

    from hmc.decoding import DECODERS, decode
    from hmc.hierarchy import Hierarchy
    from hmc.models import build_model
    from hmc.numpy_decoding import TreePlan
    from hmc.numpy_decoding import decode as np_decode

    torch.set_num_threads(args.threads[0])
    paths, parents = [], [()]
    for d, n in enumerate(INAT21_LEVELS):
        level = [(*parents[i * len(parents) // n], f"L{d}_{i}") for i in range(n)]
        paths, parents = level, level
    h = Hierarchy.from_paths(paths, level_names=[f"level{d}" for d in range(len(INAT21_LEVELS))])
    model = build_model(h, BACKBONE, head="hrn").eval()
    fb = args.forward_batch or args.decode_batch
    out = {"nodes": h.num_nodes, "batch": args.decode_batch, "threads": args.threads[0]}
    with torch.inference_mode():
        model(torch.randn(2, 3, args.image_size, args.image_size))  # warm-up
        t = time.perf_counter()
        model(torch.randn(fb, 3, args.image_size, args.image_size))
        # Scaled linearly from a batch of `forward_batch` when the machine is too busy for 256.
        out["forward_s"] = (time.perf_counter() - t) * args.decode_batch / fb
        out["forward_measured_batch"] = fb
        head_out = model.head(torch.randn(args.decode_batch, model.backbone.num_features, 7, 7))
        for name in DECODERS:
            decode(h, head_out, name, score_kind="states", scores="sigmoid")  # warm-up
            t = time.perf_counter()
            for _ in range(args.decode_repeats):
                decode(h, head_out, name, score_kind="states", scores="sigmoid")
            sec = (time.perf_counter() - t) / args.decode_repeats
            out[f"decode_{name}_s"] = sec
            out[f"decode_{name}_share"] = sec / (sec + out["forward_s"])
        # The ONNX predictor's numpy decoding of the same raw outputs (hmc.numpy_decoding).
        plan = TreePlan(h.to_dict())
        raw = [head_out.node_scores.numpy(), None]
        if head_out.leaf_logits is not None:
            raw[1] = head_out.leaf_logits.numpy()
        for name in DECODERS:
            np_decode(plan, *raw, name, score_kind="states", scores="sigmoid")
            t = time.perf_counter()
            for _ in range(args.decode_repeats):
                np_decode(plan, *raw, name, score_kind="states", scores="sigmoid")
            sec = (time.perf_counter() - t) / args.decode_repeats
            out[f"numpy_decode_{name}_s"] = sec
            out[f"numpy_decode_{name}_share"] = sec / (sec + out["forward_s"])
    return out


# --------------------------------------------------------------------------- driver
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/cub-crops-77/images"))
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=1, help="runs of each kind per thread count")
    p.add_argument("--kinds", nargs="+", default=["bare", "model", "torch", "onnx"])
    p.add_argument("--decode", action="store_true", help="also the 16k-node decode cost")
    p.add_argument("--decode-only", action="store_true")
    p.add_argument("--decode-batch", type=int, default=256)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--forward-batch", type=int, default=None, help="time the forward on fewer")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--artifacts", type=Path, default=None, help="reuse model.ckpt/model.onnx")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "decode":
        print(json.dumps(decode_cost(args)))
        return
    files = build_files(args.data, args.images)
    if args.worker:
        print(json.dumps(worker(args.worker, files, args)))
        return
    result: dict = {"command": " ".join(sys.argv), "load_before": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.artifacts is not None:  # model.ckpt + model.onnx of an earlier run
            tmp = str(args.artifacts)
        elif not args.decode_only:
            make_artifacts(Path(tmp), args.image_size)
        if not args.decode_only:
            for threads in args.threads:
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                for _ in range(args.repeats):
                    for kind in args.kinds:
                        cmd = [sys.executable, __file__, "--worker", kind, "--folder", tmp,
                               "--threads", str(threads), "--data", str(args.data),
                               "--images", str(args.images), "--batch-size",
                               str(args.batch_size)]  # fmt: skip
                        r = json.loads(subprocess.check_output(cmd, env=env).splitlines()[-1])
                        print(json.dumps(r), file=sys.stderr)
                        result["runs"].append(r)
            result["ratios"] = ratios(result["runs"])
        if args.decode or args.decode_only:
            threads = args.threads[0]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            cmd = [sys.executable, __file__, "--worker", "decode", "--threads", str(threads),
                   "--decode-batch", str(args.decode_batch), "--image-size",
                   str(args.image_size), "--decode-repeats", str(args.decode_repeats),
                   "--forward-batch", str(args.forward_batch or args.decode_batch)]  # fmt: skip
            result["decode"] = json.loads(subprocess.check_output(cmd, env=env).splitlines()[-1])
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


def ratios(runs: list[dict]) -> dict:
    import statistics

    out = {}
    for threads in sorted({r["threads"] for r in runs}):
        speed = {
            k: statistics.median(
                r["images_per_s"] for r in runs if r["kind"] == k and r["threads"] == threads
            )
            for k in {r["kind"] for r in runs}
        }
        if "bare" in speed and "torch" in speed:
            out[f"torch_over_bare_{threads}t"] = speed["torch"] / speed["bare"]
        if "model" in speed and "torch" in speed:
            out[f"torch_over_model_{threads}t"] = speed["torch"] / speed["model"]
        if "onnx" in speed and "torch" in speed:
            out[f"onnx_over_torch_{threads}t"] = speed["onnx"] / speed["torch"]
    return out


if __name__ == "__main__":
    main()
